//! DICOM and NIfTI files as 8-bit images: one 2-D slice, its stored values rescaled to physical
//! units and windowed to 0–255.
//!
//! The window, for both formats: the file's own (DICOM Window Center/Width) where it has one;
//! else a lung window (center −600, width 1500) for CT, i.e. a DICOM of Modality CT or values
//! that look like Hounsfield units (minimum below −500); else the slice's own min–max. A window
//! `[c − w/2, c + w/2]` maps linearly onto 0–255, rounded and clamped (one rule everywhere, half a
//! level away from the DICOM standard's `c − 0.5` form). MONOCHROME1 is inverted after windowing.
//!
//! Both readers work on the file's bytes in memory, refuse headers that claim more than
//! [`MAX_DECODED_BYTES`] before allocating, and report damaged files as errors, never panics.

mod dicom;
mod nifti;
pub mod write;

use std::path::Path;

use super::DataError;
use super::image::{ImageU8, MAX_DECODED_BYTES, ReadOptions};

/// A medical format recognised by content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MedicalFormat {
    Dicom,
    Nifti,
    /// A gzip stream named `*.nii.gz`.
    NiftiGz,
}

/// File-name endings of the medical formats, longest first (`x.nii.gz` has the stem `x`).
pub const MEDICAL_EXTENSIONS: [&str; 3] = [".nii.gz", ".nii", ".dcm"];

/// `name` without a medical extension (case-insensitive), or `None` if it has none.
pub fn medical_stem(name: &str) -> Option<&str> {
    let lower = name.to_ascii_lowercase();
    MEDICAL_EXTENSIONS
        .iter()
        .find(|ext| lower.len() > ext.len() && lower.ends_with(*ext))
        .map(|ext| &name[..name.len() - ext.len()])
}

/// The medical format of `bytes` by content: `DICM` at byte 128 (DICOM Part 10), a NIfTI-1
/// header (`sizeof_hdr` 348 in either byte order and magic `n+1`/`ni1` at byte 344), or a gzip
/// stream whose `name` ends in `.nii.gz`.
pub fn sniff(name: &str, bytes: &[u8]) -> Option<MedicalFormat> {
    if bytes.get(128..132) == Some(b"DICM") {
        Some(MedicalFormat::Dicom)
    } else if nifti::is_header(bytes) {
        Some(MedicalFormat::Nifti)
    } else if bytes.starts_with(&[0x1f, 0x8b]) && name.to_ascii_lowercase().ends_with(".nii.gz") {
        Some(MedicalFormat::NiftiGz)
    } else {
        None
    }
}

/// One slice of a medical file as 8 bits: grey (1 channel) or, for an RGB DICOM, B, G, R.
/// `path` names the file in errors.
pub fn decode(
    path: &Path,
    format: MedicalFormat,
    bytes: &[u8],
    opts: &ReadOptions,
) -> Result<ImageU8, DataError> {
    // The parsers are dependencies reading untrusted bytes; a damaged file that makes one panic
    // is reported as unreadable instead of taking the whole run down.
    let read = || match format {
        MedicalFormat::Dicom => dicom::read(bytes, opts),
        MedicalFormat::Nifti => nifti::read(bytes, false, opts),
        MedicalFormat::NiftiGz => nifti::read(bytes, true, opts),
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
        .unwrap_or_else(|_| Err("the file is damaged (its reader failed on it)".into()))
        .map_err(|reason| DataError::Image {
            path: path.to_path_buf(),
            reason,
        })
}

/// The slice to read of `count`: `requested`, or the middle one; out of range is an error
/// giving the range.
fn pick_slice(requested: Option<usize>, count: usize, what: &str) -> Result<usize, String> {
    match requested {
        None => Ok(count / 2),
        Some(i) if i < count => Ok(i),
        Some(i) => Err(format!(
            "{what} {i} is out of range: the file has {count} (0..={})",
            count - 1
        )),
    }
}

/// A window on physical values: `lo` → 0, `hi` → 255.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Window {
    lo: f64,
    hi: f64,
}

/// The CT lung window (center −600, width 1500).
const LUNG: Window = Window {
    lo: -1350.0,
    hi: 150.0,
};

/// Values below this look like Hounsfield units (air is −1000).
const HOUNSFIELD_MIN: f64 = -500.0;

impl Window {
    fn centred(center: f64, width: f64) -> Window {
        Window {
            lo: center - width / 2.0,
            hi: center + width / 2.0,
        }
    }

    /// The module's rule: the file's window, else the lung window for CT, else min–max.
    fn choose(values: &[f32], file: Option<Window>, ct: bool) -> Window {
        if let Some(w) = file {
            return w;
        }
        let (min, max) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |m, &v| {
                (m.0.min(f64::from(v)), m.1.max(f64::from(v)))
            });
        if ct || min < HOUNSFIELD_MIN {
            LUNG
        } else {
            Window { lo: min, hi: max }
        }
    }

    /// `v` on 0–255; a window of no width puts everything above `lo` at 255.
    fn apply(self, v: f32) -> u8 {
        let v = f64::from(v);
        let span = self.hi - self.lo;
        if !v.is_finite() || v <= self.lo {
            return 0;
        }
        if span <= 0.0 || v >= self.hi {
            return 255;
        }
        ((v - self.lo) / span * 255.0).round() as u8
    }
}

/// Physical values → 8 bits with [`Window::choose`]; `invert` for MONOCHROME1.
fn window_to_u8(values: &[f32], file: Option<Window>, ct: bool, invert: bool) -> Vec<u8> {
    let w = Window::choose(values, file, ct);
    values
        .iter()
        .map(|&v| {
            let g = w.apply(v);
            if invert { 255 - g } else { g }
        })
        .collect()
}

#[cfg(test)]
mod tests;
