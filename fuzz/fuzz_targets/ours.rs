#![no_main]
//! Our own checkpoint (metadata, checksum, shapes).

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::as_file("ckpt.safetensors", data);
    common::names_the_file(
        reclmis::checkpoint::ours::load(&path, &burn::tensor::Device::flex()),
        "ckpt.safetensors",
    );
});
