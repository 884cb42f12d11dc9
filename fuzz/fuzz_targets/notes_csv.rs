#![no_main]
//! Notes as csv.

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::as_file("notes.csv", data);
    common::names_the_file(reclmis::data::Notes::read(&path), "notes.csv");
});
