//! NIfTI-1 single files (`.nii`, and gzipped `.nii.gz`) through the `nifti` crate.
//!
//! The slice is axial: voxels `[x, y, k]` for the chosen `k` along the third axis (the first
//! index of any fourth and higher axis). Orientation, kept simple and the same for every file
//! whatever its qform/sform: column = `x` as stored, row = `y` flipped (the last stored row is
//! the top one), which shows the usual RAS-stored volume anterior up, as NIfTI viewers do.
//! `scl_slope`/`scl_inter` are applied (a slope of 0 means none, as the standard says).

use std::io::Read;

use flate2::read::GzDecoder;
use nifti::{InMemNiftiVolume, NiftiHeader, RandomAccessNiftiVolume};

use super::{MAX_DECODED_BYTES, ReadOptions, pick_slice, window_to_u8};
use crate::data::image::ImageU8;

/// A NIfTI-1 header's size, which is also its first field.
const HEADER_BYTES: usize = 348;
/// Where the magic (`n+1\0` single file, `ni1\0` header/image pair) sits.
const MAGIC_AT: usize = 344;

/// Whether `bytes` start with a NIfTI-1 header: `sizeof_hdr` 348 (either byte order) and a
/// NIfTI-1 magic.
pub(super) fn is_header(bytes: &[u8]) -> bool {
    let Some(head) = bytes.get(..HEADER_BYTES) else {
        return false;
    };
    let size = [head[0], head[1], head[2], head[3]];
    let sized = i32::from_le_bytes(size) == 348 || i32::from_be_bytes(size) == 348;
    sized && matches!(&head[MAGIC_AT..], b"n+1\0" | b"ni1\0")
}

/// One axial slice of the NIfTI file in `bytes` (gzipped when `gz`) as 8-bit grey.
pub(super) fn read(bytes: &[u8], gz: bool, opts: &ReadOptions) -> Result<ImageU8, String> {
    if gz {
        read_from(GzDecoder::new(bytes), None, opts)
    } else {
        read_from(bytes, Some(bytes.len()), opts)
    }
}

/// Reads the header, refuses absurd sizes, then reads the voxels; `available` is the input's
/// length where known (uncompressed), so a truncated file is refused before allocating.
fn read_from(
    mut src: impl Read,
    available: Option<usize>,
    opts: &ReadOptions,
) -> Result<ImageU8, String> {
    let mut head = [0u8; HEADER_BYTES];
    src.read_exact(&mut head)
        .map_err(|e| format!("the NIfTI header is incomplete ({e})"))?;
    if !is_header(&head) {
        return Err("not a NIfTI-1 file (no sizeof_hdr 348 with an `n+1` magic)".into());
    }
    if &head[MAGIC_AT..] == b"ni1\0" {
        return Err(
            "a NIfTI-1 header whose voxels are in a separate .img file (magic `ni1`); \
                    reclmis reads single-file .nii and .nii.gz"
                .into(),
        );
    }
    let header =
        NiftiHeader::from_reader(&head[..]).map_err(|e| format!("unreadable NIfTI header: {e}"))?;
    let dims = header
        .dim()
        .map_err(|e| format!("invalid NIfTI dimensions: {e}"))?
        .to_vec();
    let datatype = header
        .data_type()
        .map_err(|e| format!("invalid NIfTI data type: {e}"))?;
    let voxels: u128 = dims.iter().map(|&d| u128::from(d)).product();
    let data_bytes = voxels * datatype.size_of() as u128;
    // The slice is also held as f32 values.
    let slice_f32: u128 = dims
        .iter()
        .take(2)
        .map(|&d| u128::from(d))
        .product::<u128>()
        * 4;
    if data_bytes.max(slice_f32) > u128::from(MAX_DECODED_BYTES) {
        return Err(format!(
            "the header claims a {dims:?} volume of {datatype:?} ({} MB), more than the {} MB \
             reclmis decodes",
            data_bytes / 1_000_000,
            MAX_DECODED_BYTES / 1_000_000
        ));
    }
    let offset = data_offset(header.vox_offset)?;
    let needed = offset as u128 + data_bytes;
    if let Some(len) = available.filter(|&len| (len as u128) < needed) {
        return Err(format!(
            "the NIfTI file is truncated: {len} bytes, its header needs {needed}"
        ));
    }
    let skip = (offset - HEADER_BYTES) as u64;
    let skipped = std::io::copy(&mut (&mut src).take(skip), &mut std::io::sink())
        .map_err(|e| format!("the NIfTI file is damaged ({e})"))?;
    if skipped != skip {
        return Err("the NIfTI file is truncated before its voxels".into());
    }
    // The voxels are read here, their count checked, before the crate sees them: it slices
    // its buffer by the header's sizes and would panic on a short (e.g. gzipped) stream.
    let mut data = Vec::new();
    (&mut src)
        .take(data_bytes as u64)
        .read_to_end(&mut data)
        .map_err(|e| format!("the NIfTI file is damaged ({e})"))?;
    if (data.len() as u128) < data_bytes {
        return Err(format!(
            "the NIfTI file is truncated: {} bytes of voxels, its header needs {data_bytes}",
            data.len()
        ));
    }
    let volume = InMemNiftiVolume::from_reader(&data[..], &header)
        .map_err(|e| format!("cannot read the NIfTI voxels: {e}"))?;
    // The crate sizes its buffer from `bitpix`, which a damaged header can set apart from the
    // data type; indexing would then run past the buffer.
    if (volume.raw_data().len() as u128) < data_bytes {
        return Err(format!(
            "the NIfTI header disagrees with itself: bitpix {} for data type {datatype:?}",
            header.bitpix
        ));
    }
    axial_slice(&volume, &dims, opts)
}

/// `vox_offset` as a byte position: whole, at or after the header.
fn data_offset(vox_offset: f32) -> Result<usize, String> {
    let ok = vox_offset.is_finite()
        && vox_offset.fract() == 0.0
        && vox_offset >= HEADER_BYTES as f32
        && f64::from(vox_offset) <= MAX_DECODED_BYTES as f64;
    if ok {
        Ok(vox_offset as usize)
    } else {
        Err(format!("invalid NIfTI vox_offset {vox_offset}"))
    }
}

/// Slice `k` (the option, or the middle) along the third axis, rows flipped, windowed.
fn axial_slice(
    volume: &InMemNiftiVolume,
    dims: &[u16],
    opts: &ReadOptions,
) -> Result<ImageU8, String> {
    let extent = |axis: usize| usize::from(dims.get(axis).copied().unwrap_or(1));
    let (nx, ny, nz) = (extent(0), extent(1), extent(2));
    let k = pick_slice(opts.slice, nz, "slice")?;
    let mut coords = vec![0u16; dims.len()];
    if let Some(c) = coords.get_mut(2) {
        *c = k as u16;
    }
    let mut values = Vec::with_capacity(nx * ny);
    for row in 0..ny {
        let y = ny - 1 - row;
        for x in 0..nx {
            coords[0] = x as u16;
            if let Some(c) = coords.get_mut(1) {
                *c = y as u16;
            }
            let v = volume
                .get_f64(&coords)
                .map_err(|e| format!("cannot read the NIfTI voxels: {e}"))?;
            values.push(v as f32);
        }
    }
    Ok(ImageU8 {
        width: nx,
        height: ny,
        channels: 1,
        data: window_to_u8(&values, None, false, false),
    })
}
