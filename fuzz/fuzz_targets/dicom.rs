#![no_main]
//! DICOM files, from memory as `serve` reads uploads and from disk as the data loader does.

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use reclmis::data::image::{ReadOptions, read_bgr_bytes, read_grey};

fuzz_target!(|data: &[u8]| {
    common::names_the_file(read_bgr_bytes("scan.dcm", data, &ReadOptions::default()), "scan.dcm");
    let path = common::as_file("scan.dcm", data);
    common::names_the_file(read_grey(&path), "scan.dcm");
});
