#![no_main]
//! NIfTI-1 volumes, plain and gzipped (the first input byte picks which), any slice.

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use reclmis::data::image::{ReadOptions, read_bgr_bytes};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let name = if choice & 1 == 0 { "volume.nii" } else { "volume.nii.gz" };
    let slice = (choice & 0x80 != 0).then_some(usize::from(choice >> 1 & 0x3f));
    common::names_the_file(read_bgr_bytes(name, bytes, &ReadOptions { slice }), name);
});
