#![no_main]
//! Images (PNG, or whatever the bytes are).

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::as_file("image.png", data);
    common::names_the_file(reclmis::data::image::load_image(&path, 32), "image.png");
});
