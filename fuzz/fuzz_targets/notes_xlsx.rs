#![no_main]
//! Notes as an Excel workbook.

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::as_file("notes.xlsx", data);
    common::names_the_file(reclmis::data::Notes::read(&path), "notes.xlsx");
});
