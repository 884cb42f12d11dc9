//! DICOM Part 10 files (preamble, `DICM`, file meta group, data set) through `dicom-object`
//! and `dicom-pixeldata`: uncompressed (implicit/explicit VR, either byte order), deflated, RLE
//! and the JPEG baseline/extended/lossless syntaxes; JPEG 2000, JPEG-LS and the video syntaxes
//! need native codecs and are refused by name.

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileMetaTable, OpenFileOptions};
use dicom_pixeldata::{
    ConvertOptions, DecodedPixelData, PhotometricInterpretation, PixelDecoder, VoiLutOption,
};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use super::{MAX_DECODED_BYTES, ReadOptions, Window, pick_slice, window_to_u8};
use crate::data::image::ImageU8;

/// Where the file meta group starts: after the 128-byte preamble and `DICM`.
const META_START: usize = 128;

/// One frame of the DICOM file in `bytes` as 8 bits (see the module rules in `medical`).
pub(super) fn read(bytes: &[u8], opts: &ReadOptions) -> Result<ImageU8, String> {
    check_transfer_syntax(bytes)?;
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| format!("not a readable DICOM file: {e}"))?;
    let frames = check_size(&obj)?;
    let frame = pick_slice(opts.slice, frames, "frame")?;
    let pixels = obj
        .decode_pixel_data_frame(frame as u32)
        .map_err(|e| format!("cannot decode the DICOM pixel data: {e}"))?;
    let ct = obj
        .get(tags::MODALITY)
        .and_then(|e| e.to_str().ok())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("CT"));
    to_image(&pixels, ct)
}

/// The transfer syntax named in the file meta group, refused by name when its pixel data
/// cannot be decoded without native codecs.
fn check_transfer_syntax(bytes: &[u8]) -> Result<(), String> {
    let meta = FileMetaTable::from_reader(&bytes[META_START..])
        .map_err(|e| format!("not a readable DICOM file meta group: {e}"))?;
    let uid = meta.transfer_syntax();
    match TransferSyntaxRegistry.get(uid) {
        None => Err(format!("unknown DICOM transfer syntax {uid}")),
        Some(ts) if !ts.can_decode_all() => Err(format!(
            "DICOM transfer syntax {} ({uid}) is not supported; reclmis reads uncompressed, \
             deflated, RLE and JPEG (baseline, extended, lossless) DICOM",
            ts.name()
        )),
        Some(_) => Ok(()),
    }
}

/// The number of frames, after refusing a header that claims more than reclmis decodes.
fn check_size(obj: &dicom_object::DefaultDicomObject) -> Result<usize, String> {
    let int = |tag, default: u64| -> Result<u64, String> {
        match obj.get(tag) {
            None => Ok(default),
            Some(e) => e
                .to_int::<u64>()
                .map_err(|_| format!("DICOM attribute {tag} is not a number")),
        }
    };
    let rows = int(tags::ROWS, 0)?;
    let cols = int(tags::COLUMNS, 0)?;
    let samples = int(tags::SAMPLES_PER_PIXEL, 1)?;
    let bits = int(tags::BITS_ALLOCATED, 0)?;
    let frames = int(tags::NUMBER_OF_FRAMES, 1)?.max(1);
    if rows == 0 || cols == 0 {
        return Err(format!("the DICOM image has no pixels ({cols}×{rows})"));
    }
    if !matches!(bits, 8 | 16) {
        return Err(format!(
            "{bits}-bit DICOM pixels are not supported (8 or 16)"
        ));
    }
    // Stored bytes of all frames, and the f32 values of one frame.
    let pixels = u128::from(rows) * u128::from(cols) * u128::from(samples);
    let total = pixels * u128::from(bits / 8) * u128::from(frames);
    let one_frame_f32 = pixels * 4;
    if total.max(one_frame_f32) > u128::from(MAX_DECODED_BYTES) {
        return Err(format!(
            "the file claims {frames} frame(s) of {cols}×{rows}×{samples} at {bits} bits \
             ({} MB), more than the {} MB reclmis decodes",
            total / 1_000_000,
            MAX_DECODED_BYTES / 1_000_000
        ));
    }
    usize::try_from(frames).map_err(|_| format!("{frames} frames is too many"))
}

/// Decoded pixels of one frame → 8 bits: Rescale Slope/Intercept, the window, MONOCHROME1.
fn to_image(pixels: &DecodedPixelData, ct: bool) -> Result<ImageU8, String> {
    let (width, height) = (pixels.columns() as usize, pixels.rows() as usize);
    let photometric = pixels.photometric_interpretation();
    let samples = pixels.samples_per_pixel();
    // Modality LUT (rescale) on, VOI LUT off: the window is applied here, by the module's rule.
    let options = ConvertOptions::new().with_voi_lut(VoiLutOption::Identity);
    let values: Vec<f32> = pixels
        .to_vec_frame_with_options(0, &options)
        .map_err(|e| format!("cannot convert the DICOM pixel data: {e}"))?;
    if values.len() != width * height * usize::from(samples) {
        return Err(format!(
            "the DICOM frame holds {} values, not {width}×{height}×{samples}",
            values.len()
        ));
    }
    match (photometric, samples) {
        (PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2, 1) => {
            let file = pixels
                .window()
                .ok()
                .flatten()
                .and_then(|w| w.first())
                .filter(|w| w.width > 0.0 && w.center.is_finite() && w.width.is_finite())
                .map(|w| Window::centred(w.center, w.width));
            let invert = *photometric == PhotometricInterpretation::Monochrome1;
            Ok(ImageU8 {
                width,
                height,
                channels: 1,
                data: window_to_u8(&values, file, ct, invert),
            })
        }
        (PhotometricInterpretation::Rgb, 3) if pixels.bits_allocated() == 8 => Ok(ImageU8 {
            width,
            height,
            channels: 3,
            data: values
                .chunks_exact(3)
                .flat_map(|p| [p[2], p[1], p[0]].map(|v| v.clamp(0.0, 255.0) as u8))
                .collect(),
        }),
        (other, n) => Err(format!(
            "DICOM photometric interpretation {other} with {n} sample(s) per pixel is not \
             supported (MONOCHROME1, MONOCHROME2 or 8-bit RGB)"
        )),
    }
}
