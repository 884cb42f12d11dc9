use std::path::PathBuf;

use super::write::{DicomImage, NiftiData, NiftiVolume, gzip};
use super::*;
use crate::data::image::{read_bgr, read_bgr_bytes, read_grey, read_grey_with};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reclmis-medical-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    dir
}

fn opts(slice: Option<usize>) -> ReadOptions {
    ReadOptions { slice }
}

/// Grey bytes of `bytes` read as the file `name`.
/// Index 3 of a 3-frame (or 3-slice) file is refused, naming the file and the valid range.
fn assert_out_of_range(name: &str, bytes: &[u8], kind: &str) {
    let err = grey(name, bytes, Some(3)).unwrap_err();
    let want = format!("{kind} 3 is out of range: the file has 3 (0..=2)");
    assert!(err.contains(&want), "{err}");
    assert!(err.contains(name), "{err}");
}

fn grey(name: &str, bytes: &[u8], slice: Option<usize>) -> Result<Vec<u8>, String> {
    let bgr = read_bgr_bytes(name, bytes, &opts(slice)).map_err(|e| e.to_string())?;
    assert_eq!(bgr.channels, 3);
    let planes: Vec<_> = bgr.data.chunks_exact(3).collect();
    assert!(
        planes.iter().all(|p| p[0] == p[1] && p[1] == p[2]),
        "grey replicated"
    );
    Ok(planes.iter().map(|p| p[0]).collect())
}

/// Stored value `v` as 16-bit two's complement.
fn s16(v: i16) -> u16 {
    v as u16
}

/// HU `[-2000, -1336, -1050, -750, 102, 500]` stored as `(HU + 1024) / 2`, signed.
fn ct_slice() -> DicomImage {
    let stored = [-488, -156, -13, 137, 563, 762].map(s16).to_vec();
    let mut img = DicomImage::grey(2, 3, stored);
    img.signed = true;
    img.rescale = Some((2.0, -1024.0));
    img
}

#[test]
fn dicom_ct_values_get_the_lung_window_after_rescale() {
    // No Modality, but values below −500 HU: (HU + 1350) / 1500 · 255, rounded and clamped.
    let bytes = ct_slice().to_bytes().unwrap();
    let want = vec![0, 2, 51, 102, 247, 255];
    assert_eq!(grey("ct.dcm", &bytes, None).unwrap(), want);
    let img = read_bgr_bytes("ct.dcm", &bytes, &ReadOptions::default()).unwrap();
    assert_eq!((img.width, img.height), (3, 2));
}

#[test]
fn dicom_window_in_the_file_wins_and_modality_ct_alone_is_ct() {
    // HU [-494, 6, 106, 1000] under the file's window 40/400: [-160, 240] → 0..255.
    let mut img = DicomImage::grey(2, 2, vec![530, 1030, 1130, 2024]);
    img.rescale = Some((1.0, -1024.0));
    img.modality = "CT".into();
    img.window = Some((40.0, 400.0));
    let bytes = img.to_bytes().unwrap();
    assert_eq!(grey("w.dcm", &bytes, None).unwrap(), vec![0, 106, 170, 255]);
    // Without it: CT by Modality, though no value is below −500 → the lung window,
    // (HU + 1350) / 1500 · 255.
    img.window = None;
    let bytes = img.to_bytes().unwrap();
    assert_eq!(
        grey("w.dcm", &bytes, None).unwrap(),
        vec![146, 231, 248, 255]
    );
}

#[test]
fn dicom_monochrome1_is_inverted_after_min_max() {
    let mut img = DicomImage::grey(1, 4, vec![0, 200, 600, 1000]);
    img.photometric = "MONOCHROME1".into();
    img.modality = "CR".into();
    let bytes = img.to_bytes().unwrap();
    assert_eq!(
        grey("cr.dcm", &bytes, None).unwrap(),
        vec![255, 204, 102, 0]
    );
}

#[test]
fn dicom_frames_default_to_the_middle_and_the_option_picks_one() {
    // Window 50/100 = [0, 100]: frame k's second pixel is 20·(k+1) → 51·(k+1).
    let mut img = DicomImage::grey(1, 2, vec![0, 20, 0, 40, 0, 60]);
    img.window = Some((50.0, 100.0));
    let bytes = img.to_bytes().unwrap();
    assert_eq!(grey("mf.dcm", &bytes, None).unwrap(), vec![0, 102]);
    assert_eq!(grey("mf.dcm", &bytes, Some(0)).unwrap(), vec![0, 51]);
    assert_eq!(grey("mf.dcm", &bytes, Some(2)).unwrap(), vec![0, 153]);
    assert_out_of_range("mf.dcm", &bytes, "frame");
}

#[test]
fn dicom_files_are_read_by_content_from_disk_too() {
    let dir = scratch_dir("dicom-disk");
    // No .dcm extension: recognised by `DICM` at byte 128.
    let path = dir.join("IM0001");
    std::fs::write(&path, ct_slice().to_bytes().unwrap()).unwrap();
    let bgr = read_bgr(&path).unwrap();
    assert_eq!(bgr.data[3..6], [2, 2, 2]);
    assert_eq!(
        read_grey(&path).unwrap().data,
        vec![0, 2, 51, 102, 247, 255]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dicom_compressed_syntax_and_damage_are_errors_naming_the_file() {
    let mut img = ct_slice();
    img.transfer_syntax = "1.2.840.10008.1.2.4.90".into();
    let bytes = img.to_bytes().unwrap();
    let err = grey("j2k.dcm", &bytes, None).unwrap_err();
    assert!(err.contains("1.2.840.10008.1.2.4.90"), "{err}");
    assert!(err.contains("JPEG 2000"), "{err}");
    assert!(
        err.contains("not supported") && err.contains("j2k.dcm"),
        "{err}"
    );

    // An unknown UID (the writer refuses one, so the meta group is patched, same length).
    let mut odd = ct_slice().to_bytes().unwrap();
    let uid = b"1.2.840.10008.1.2.1\0";
    let at = odd.windows(uid.len()).position(|w| w == uid).unwrap();
    odd[at..at + uid.len()].copy_from_slice(b"1.2.840.99999.9.9.9\0");
    let err = grey("odd.dcm", &odd, None).unwrap_err();
    assert!(
        err.contains("unknown DICOM transfer syntax 1.2.840.99999.9.9.9"),
        "{err}"
    );

    let whole = ct_slice().to_bytes().unwrap();
    for cut in [133, 200, whole.len() - 5] {
        let err = grey("cut.dcm", &whole[..cut], None).unwrap_err();
        assert!(
            err.contains("unreadable image") && err.contains("cut.dcm"),
            "{cut}: {err}"
        );
    }
}

#[test]
fn dicom_absurd_sizes_are_refused_before_decoding() {
    let mut img = DicomImage::grey(2, 2, vec![0; 4]);
    img.rows = 65_535;
    img.columns = 65_535;
    let err = grey("huge.dcm", &img.to_bytes().unwrap(), None).unwrap_err();
    assert!(err.contains("more than the 1500 MB"), "{err}");
}

/// `[2, 2, 3]` int16, `v = 150·k + 30·y + 3·x`, scaled `2v − 1350`: Hounsfield-like, so the
/// lung window maps `v` to `0.34 v`.
fn volume() -> NiftiVolume {
    let mut values = Vec::new();
    for k in 0..3 {
        for y in 0..2 {
            for x in 0..2 {
                values.push(150 * k + 30 * y + 3 * x);
            }
        }
    }
    NiftiVolume {
        dims: vec![2, 2, 3],
        data: NiftiData::I16(values),
        scaling: (2.0, -1350.0),
    }
}

#[test]
fn nifti_slices_are_axial_flipped_and_windowed() {
    let bytes = volume().to_bytes();
    // Row 0 of the image is the last stored row (y = 1).
    assert_eq!(grey("v.nii", &bytes, None).unwrap(), vec![61, 62, 51, 52]);
    assert_eq!(grey("v.nii", &bytes, Some(0)).unwrap(), vec![10, 11, 0, 1]);
    assert_eq!(
        grey("v.nii", &bytes, Some(2)).unwrap(),
        vec![112, 113, 102, 103]
    );
    assert_out_of_range("v.nii", &bytes, "slice");
}

#[test]
fn nifti_gz_and_2d_min_max() {
    let gz = gzip(&volume().to_bytes());
    assert_eq!(grey("v.nii.gz", &gz, None).unwrap(), vec![61, 62, 51, 52]);
    // A gzip stream not named .nii.gz is not taken for NIfTI.
    let err = grey("v.gz", &gz, None).unwrap_err();
    assert!(
        err.contains("not a PNG, JPEG, BMP, TIFF, DICOM or NIfTI file"),
        "{err}"
    );

    // 2-D uint8, no scaling, min–max: stored rows [0, 40] and [120, 200].
    let flat = NiftiVolume {
        dims: vec![2, 2],
        data: NiftiData::U8(vec![0, 40, 120, 200]),
        scaling: (0.0, 0.0),
    };
    let dir = scratch_dir("nifti-disk");
    let path = dir.join("flat.nii.gz");
    flat.write(&path).unwrap();
    assert_eq!(read_grey(&path).unwrap().data, vec![153, 255, 0, 51]);
    let err = read_grey_with(&path, &opts(Some(1)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("slice 1 is out of range: the file has 1 (0..=0)"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nifti_absurd_and_truncated_files_are_errors_naming_the_file() {
    // 10¹² voxels claimed, 4 voxels present.
    let mut huge = volume();
    huge.dims = vec![10_000, 10_000, 10_000];
    let err = grey("huge.nii", &huge.to_bytes(), None).unwrap_err();
    assert!(
        err.contains("more than the 1500 MB") && err.contains("huge.nii"),
        "{err}"
    );
    let err = grey("huge.nii.gz", &gzip(&huge.to_bytes()), None).unwrap_err();
    assert!(err.contains("more than the 1500 MB"), "{err}");

    let whole = volume().to_bytes();
    let err = grey("cut.nii", &whole[..whole.len() - 1], None).unwrap_err();
    assert!(
        err.contains("truncated") && err.contains("cut.nii"),
        "{err}"
    );
    let err = grey("cut.nii.gz", &gzip(&whole[..whole.len() - 1]), None).unwrap_err();
    assert!(err.contains("cut.nii.gz"), "{err}");
    let gz = gzip(&whole);
    let err = grey("cut.nii.gz", &gz[..gz.len() / 2], None).unwrap_err();
    assert!(err.contains("cut.nii.gz"), "{err}");
}

#[test]
fn formats_are_sniffed_by_content_and_stems_drop_medical_extensions() {
    let dicom = ct_slice().to_bytes().unwrap();
    let nifti = volume().to_bytes();
    assert_eq!(sniff("x.png", &dicom), Some(MedicalFormat::Dicom));
    assert_eq!(sniff("x.dcm", &nifti), Some(MedicalFormat::Nifti));
    assert_eq!(
        sniff("x.NII.GZ", &gzip(&nifti)),
        Some(MedicalFormat::NiftiGz)
    );
    assert_eq!(sniff("x.nii.gz", b"\x89PNG\r\n\x1a\n"), None);
    assert_eq!(medical_stem("case_01.nii.gz"), Some("case_01"));
    assert_eq!(medical_stem("case_01.NII"), Some("case_01"));
    assert_eq!(medical_stem("IM1.dcm"), Some("IM1"));
    assert_eq!(medical_stem("x.png"), None);
    assert_eq!(medical_stem(".nii"), None);
}

/// The fuzzer's finding (bench/results/fuzz-20261205-145903): a gzipped volume whose `bitpix`
/// disagrees with its data type. The nifti crate sized its buffer from one and indexed it with
/// the other, past its end; the reader now compares the two and refuses the file.
#[test]
fn a_volume_whose_bitpix_disagrees_with_its_data_type_is_refused_not_a_panic() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz-nifti-short.nii.gz");
    let bytes = std::fs::read(&path).expect("the fixture is in the repository");
    let msg = read_bgr_bytes("fuzz-nifti-short.nii.gz", &bytes, &ReadOptions::default())
        .expect_err("refused")
        .to_string();
    assert!(msg.contains("fuzz-nifti-short.nii.gz"), "{msg}");
    assert!(
        msg.contains("the NIfTI header disagrees with itself: bitpix"),
        "{msg}"
    );
    assert!(read_bgr(&path).is_err());
}
