#![no_main]
//! The authors' torch.save archive (zip + pickle, strided views).

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::as_file("best_model.pth.tar", data);
    common::names_the_file(
        reclmis::checkpoint::torch::read_checkpoint(&path),
        "best_model.pth.tar",
    );
});
