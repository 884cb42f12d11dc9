//! Small DICOM and NIfTI files from values: the known-answer fixtures of the readers' tests, and
//! a way to hand reclmis a volume made elsewhere in code.

use std::path::Path;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use flate2::Compression;
use flate2::write::GzEncoder;

/// Explicit VR Little Endian, the usual uncompressed transfer syntax.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A 16-bit grey DICOM image (Secondary Capture), one or more frames.
#[derive(Clone, Debug)]
pub struct DicomImage {
    pub rows: u16,
    pub columns: u16,
    /// Stored values, frame after frame, rows top to bottom; as two's complement with Pixel
    /// Representation 1 where `signed`.
    pub values: Vec<u16>,
    pub signed: bool,
    /// `MONOCHROME1` or `MONOCHROME2`.
    pub photometric: String,
    pub modality: String,
    /// Rescale Slope and Intercept.
    pub rescale: Option<(f64, f64)>,
    /// Window Center and Width.
    pub window: Option<(f64, f64)>,
    /// The Transfer Syntax UID the file meta group declares.
    pub transfer_syntax: String,
}

impl DicomImage {
    /// A MONOCHROME2 image of `values` (one frame if their count is `rows · columns`).
    pub fn grey(rows: u16, columns: u16, values: Vec<u16>) -> DicomImage {
        DicomImage {
            rows,
            columns,
            values,
            signed: false,
            photometric: "MONOCHROME2".into(),
            modality: "OT".into(),
            rescale: None,
            window: None,
            transfer_syntax: EXPLICIT_VR_LE.into(),
        }
    }

    /// The DICOM Part 10 file: preamble, `DICM`, file meta group, data set.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let frames = self.values.len() / (usize::from(self.rows) * usize::from(self.columns));
        let mut obj = InMemDicomObject::new_empty();
        let mut put = |tag, vr, value: PrimitiveValue| obj.put(DataElement::new(tag, vr, value));
        put(
            tags::SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.7".into(),
        );
        put(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1".into());
        put(tags::MODALITY, VR::CS, self.modality.as_str().into());
        put(tags::ROWS, VR::US, self.rows.into());
        put(tags::COLUMNS, VR::US, self.columns.into());
        put(tags::SAMPLES_PER_PIXEL, VR::US, 1u16.into());
        put(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            self.photometric.as_str().into(),
        );
        put(tags::BITS_ALLOCATED, VR::US, 16u16.into());
        put(tags::BITS_STORED, VR::US, 16u16.into());
        put(tags::HIGH_BIT, VR::US, 15u16.into());
        put(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            u16::from(self.signed).into(),
        );
        if frames > 1 {
            put(tags::NUMBER_OF_FRAMES, VR::IS, frames.to_string().into());
        }
        if let Some((slope, intercept)) = self.rescale {
            put(tags::RESCALE_SLOPE, VR::DS, slope.to_string().into());
            put(
                tags::RESCALE_INTERCEPT,
                VR::DS,
                intercept.to_string().into(),
            );
        }
        if let Some((center, width)) = self.window {
            put(tags::WINDOW_CENTER, VR::DS, center.to_string().into());
            put(tags::WINDOW_WIDTH, VR::DS, width.to_string().into());
        }
        put(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(self.values.iter().copied().collect()),
        );
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax(self.transfer_syntax.as_str())
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
            .media_storage_sop_instance_uid("2.25.1");
        let file = obj.with_meta(meta).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        file.write_all(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// Voxel values of a NIfTI volume, `x` fastest, then `y`, then `z`.
#[derive(Clone, Debug)]
pub enum NiftiData {
    U8(Vec<u8>),
    I16(Vec<i16>),
    F32(Vec<f32>),
}

/// A NIfTI-1 single-file volume (`n+1`, little endian, voxels at byte 352).
#[derive(Clone, Debug)]
pub struct NiftiVolume {
    /// Extents of the axes, `[nx, ny]` or `[nx, ny, nz]` (up to 7 axes).
    pub dims: Vec<u16>,
    pub data: NiftiData,
    /// `scl_slope` and `scl_inter` (a slope of 0 means no scaling).
    pub scaling: (f32, f32),
}

impl NiftiVolume {
    /// The `.nii` file: the 348-byte header, 4 bytes saying no extension, the voxels.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (datatype, bitpix, voxels): (i16, i16, Vec<u8>) = match &self.data {
            NiftiData::U8(v) => (2, 8, v.clone()),
            NiftiData::I16(v) => (4, 16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            NiftiData::F32(v) => (16, 32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        let mut h = vec![0u8; 352];
        let mut at = |offset: usize, bytes: &[u8]| {
            h[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        at(0, &348i32.to_le_bytes());
        let mut dim = [1i16; 8];
        dim[0] = self.dims.len() as i16;
        for (d, &n) in dim[1..].iter_mut().zip(&self.dims) {
            *d = n as i16;
        }
        at(40, &dim.map(i16::to_le_bytes).concat());
        at(70, &datatype.to_le_bytes());
        at(72, &bitpix.to_le_bytes());
        at(76, &[1f32; 8].map(f32::to_le_bytes).concat());
        at(108, &352f32.to_le_bytes());
        at(112, &self.scaling.0.to_le_bytes());
        at(116, &self.scaling.1.to_le_bytes());
        at(344, b"n+1\0");
        h.extend_from_slice(&voxels);
        h
    }

    /// Writes the volume to `path`, gzipped where the name ends in `.gz`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = self.to_bytes();
        if path.to_string_lossy().to_ascii_lowercase().ends_with(".gz") {
            std::fs::write(path, gzip(&bytes))
        } else {
            std::fs::write(path, bytes)
        }
    }
}

/// `bytes` as a gzip stream.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes)
        .expect("writing into a Vec cannot fail");
    enc.finish().expect("writing into a Vec cannot fail")
}
