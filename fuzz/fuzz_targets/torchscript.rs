#![no_main]
//! OpenAI's TorchScript CLIP archive.

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::as_file("ViT.pt", data);
    common::names_the_file(
        reclmis::checkpoint::torch::read_torchscript(&path),
        "ViT.pt",
    );
});
