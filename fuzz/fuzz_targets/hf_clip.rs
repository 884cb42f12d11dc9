#![no_main]
//! Hugging Face CLIP safetensors.

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::as_file("model.safetensors", data);
    common::names_the_file(
        reclmis::checkpoint::torch::read_hf_clip(&path),
        "model.safetensors",
    );
});
