//! Pictures and arrays for people: PNG files, mask overlays, POI heatmaps and `.npy` arrays.
//! `predict` writes them per image; the demo report reuses them.
//!
//! Images here are 8-bit, rows top to bottom, channels interleaved. Inputs come as the model's
//! [`ImageU8`] (B, G, R); every picture written is RGB (or grey for masks).

pub mod curves;

use std::path::Path;

use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};

use crate::Error;
use crate::data::ImageU8;
use crate::files::write_atomic;

/// Fill and edge colours of the predicted mask in overlays.
const MASK_FILL: [u8; 3] = [235, 45, 45];
const MASK_FILL_ALPHA: f32 = 0.35;
const MASK_EDGE: [u8; 3] = [255, 225, 0];

/// A dark-to-bright "fire" colour map (dark violet → red → orange → pale yellow): monotone in
/// lightness, so the hottest patches read as the brightest also in grey print.
const FIRE: [[f32; 3]; 5] = [
    [24.0, 12.0, 60.0],
    [110.0, 22.0, 120.0],
    [200.0, 50.0, 75.0],
    [248.0, 145.0, 30.0],
    [252.0, 250.0, 170.0],
];

/// PNG bytes of an 8-bit grey (1 channel) or RGB (3 channels) image.
///
/// # Panics
/// If `data` is not `width · height · channels` bytes or `channels` is not 1 or 3.
pub fn encode_png(width: usize, height: usize, channels: usize, data: &[u8]) -> Vec<u8> {
    assert_eq!(
        data.len(),
        width * height * channels,
        "PNG data is width · height · channels bytes"
    );
    let colour = match channels {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        _ => panic!("PNGs are written grey or RGB, not {channels} channels"),
    };
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(data, to_u32(width), to_u32(height), colour)
        .expect("encoding a PNG into memory cannot fail for a buffer of the right size");
    bytes
}

/// Writes a PNG atomically (temporary file + rename).
pub fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    channels: usize,
    data: &[u8],
) -> Result<(), Error> {
    write_file(path, &encode_png(width, height, channels, data))
}

/// Writes bytes atomically, naming the file in the error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_atomic(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A NumPy `.npy` file (format 1.0) of little-endian float32 in C order.
pub fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "npy data matches its shape"
    );
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces and ended by a
    // newline so the data starts on a 64-byte boundary, as NumPy writes it.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let header_len =
        u16::try_from(header.len()).expect("an npy header of a few dimensions fits in u16");
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// RGB pixels of a B, G, R (or grey) image.
pub fn to_rgb(img: &ImageU8) -> Vec<u8> {
    match img.channels {
        1 => img.data.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => img
            .data
            .chunks_exact(img.channels)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect(),
    }
}

/// The image with the mask tinted and its outline drawn (RGB, the image's size). `mask` is
/// `[height, width]`, non-zero = foreground.
pub fn overlay_mask(img: &ImageU8, mask: &[u8]) -> Vec<u8> {
    let (w, h) = (img.width, img.height);
    assert_eq!(mask.len(), w * h, "the mask has the image's size");
    let mut rgb = to_rgb(img);
    let inside = |x: usize, y: usize| mask[y * w + x] != 0;
    for y in 0..h {
        for x in 0..w {
            let px = &mut rgb[3 * (y * w + x)..3 * (y * w + x) + 3];
            // An edge pixel differs from one of its 8 neighbours, so the outline is two pixels
            // wide, straddling the boundary, and stays visible at 224 px.
            let here = inside(x, y);
            let edge = (y.saturating_sub(1)..=(y + 1).min(h - 1)).any(|yy| {
                (x.saturating_sub(1)..=(x + 1).min(w - 1)).any(|xx| inside(xx, yy) != here)
            });
            if edge {
                px.copy_from_slice(&MASK_EDGE);
            } else if here {
                blend(px, MASK_FILL, MASK_FILL_ALPHA);
            }
        }
    }
    rgb
}

/// `values` scaled to [0, 1] by their minimum and maximum (all 0 when they are all equal).
pub fn normalise(values: &[f32]) -> Vec<f32> {
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = hi - lo;
    if range.is_finite() && range > 0.0 {
        values.iter().map(|&v| (v - lo) / range).collect()
    } else {
        vec![0.0; values.len()]
    }
}

/// Bilinear resize of a `[src_h, src_w]` grid to `[dst_h, dst_w]` with half-pixel centres and
/// clamped borders (`F.interpolate(mode="bilinear", align_corners=False)`), so each grid cell
/// covers its own block of output pixels.
pub fn upsample_bilinear(
    src: &[f32],
    src_w: usize,
    src_h: usize,
    dst_w: usize,
    dst_h: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), src_w * src_h, "grid is src_w · src_h values");
    let taps = |dst: usize, src_n: usize| -> Vec<(usize, usize, f32)> {
        let scale = src_n as f32 / dst as f32;
        (0..dst)
            .map(|i| {
                let pos = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (src_n - 1) as f32);
                let lo = pos.floor() as usize;
                let hi = (lo + 1).min(src_n - 1);
                (lo, hi, pos - lo as f32)
            })
            .collect()
    };
    let xs = taps(dst_w, src_w);
    let ys = taps(dst_h, src_h);
    let mut out = Vec::with_capacity(dst_w * dst_h);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let at = |y: usize, x: usize| src[y * src_w + x];
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// The colour of `t` in [0, 1] (clamped) on the fire map.
pub fn colour_map(t: f32) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (FIRE.len() - 1) as f32;
    let i = (pos.floor() as usize).min(FIRE.len() - 2);
    let f = pos - i as f32;
    let mut c = [0u8; 3];
    for (k, v) in c.iter_mut().enumerate() {
        *v = (FIRE[i][k] * (1.0 - f) + FIRE[i + 1][k] * f).round() as u8;
    }
    c
}

/// `heat` (`[height, width]`, values in [0, 1]) coloured with the fire map over a dimmed grey copy
/// of the image; the hotter a pixel, the more opaque its colour, so cold regions still show the
/// anatomy.
pub fn heatmap_overlay(img: &ImageU8, heat: &[f32]) -> Vec<u8> {
    assert_eq!(
        heat.len(),
        img.width * img.height,
        "the heatmap has the image's size"
    );
    let rgb = to_rgb(img);
    let mut out = Vec::with_capacity(rgb.len());
    for (px, &t) in rgb.chunks_exact(3).zip(heat) {
        let grey = 0.299 * f32::from(px[0]) + 0.587 * f32::from(px[1]) + 0.114 * f32::from(px[2]);
        let base = 0.8 * grey;
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        let alpha = 0.1 + 0.7 * t;
        let colour = colour_map(t);
        out.extend(
            colour
                .iter()
                .map(|&c| (base * (1.0 - alpha) + f32::from(c) * alpha).round() as u8),
        );
    }
    out
}

fn blend(px: &mut [u8], colour: [u8; 3], alpha: f32) {
    for (v, c) in px.iter_mut().zip(colour) {
        *v = (f32::from(*v) * (1.0 - alpha) + f32::from(c) * alpha).round() as u8;
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("image sides fit in u32")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_what_numpy_writes() {
        let bytes = npy_f32(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 1.5]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert_eq!(
            header.trim_end(),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
        );
        assert!(header.ends_with('\n'));
        let data = &bytes[10 + header_len..];
        assert_eq!(data.len(), 24);
        assert_eq!(f32::from_le_bytes(data[20..24].try_into().unwrap()), 1.5);
        let one = npy_f32(&[3], &[1.0, 2.0, 3.0]);
        assert!(std::str::from_utf8(&one[10..64]).unwrap().contains("(3,)"));
    }

    #[test]
    fn bilinear_upsampling_keeps_cell_centres_and_interpolates_between() {
        // 2×2 → 4×4: output pixel centres at 0.5, 1.5, … map to grid positions -0.25, 0.25, …
        let up = upsample_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        assert_eq!(up.len(), 16);
        assert_eq!(up[0], 0.0); // clamped corner
        assert_eq!(up[15], 3.0);
        // Row 0, x = 1 → grid x 0.25: 0.75·0 + 0.25·1.
        assert!((up[1] - 0.25).abs() < 1e-6);
        // Row 1, x = 1 → grid (0.25, 0.25): 0.25 + 0.25·2 = 0.75.
        assert!((up[5] - 0.75).abs() < 1e-6);
        // A constant grid stays constant.
        assert!(
            upsample_bilinear(&[0.5; 196], 14, 14, 224, 224)
                .iter()
                .all(|&v| (v - 0.5).abs() < 1e-6)
        );
    }

    #[test]
    fn colour_map_runs_dark_to_bright() {
        assert_eq!(colour_map(0.0), [24, 12, 60]);
        assert_eq!(colour_map(1.0), [252, 250, 170]);
        assert_eq!(colour_map(0.5), [200, 50, 75]);
        let lightness =
            |c: [u8; 3]| 0.299 * c[0] as f32 + 0.587 * c[1] as f32 + 0.114 * c[2] as f32;
        let l: Vec<f32> = (0..=20)
            .map(|i| lightness(colour_map(i as f32 / 20.0)))
            .collect();
        assert!(l.windows(2).all(|w| w[1] > w[0]), "{l:?}");
        assert_eq!(normalise(&[2.0, 4.0, 3.0]), vec![0.0, 1.0, 0.5]);
        assert_eq!(normalise(&[1.0, 1.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn overlay_draws_the_outline_and_tints_the_inside() {
        let img = ImageU8 {
            width: 8,
            height: 8,
            channels: 3,
            // B, G, R = 10, 20, 30 everywhere.
            data: [10u8, 20, 30].repeat(64),
        };
        let mut mask = vec![0u8; 64];
        for y in 2..7 {
            for x in 2..7 {
                mask[y * 8 + x] = 1;
            }
        }
        let rgb = overlay_mask(&img, &mask);
        let px = |x: usize, y: usize| &rgb[3 * (y * 8 + x)..3 * (y * 8 + x) + 3];
        assert_eq!(px(0, 0), [30, 20, 10]); // untouched, RGB order
        assert_eq!(px(2, 2), MASK_EDGE); // inside the boundary
        assert_eq!(px(1, 3), MASK_EDGE); // outside the boundary
        let inner = px(4, 4);
        assert_eq!(inner, [102, 29, 22]); // 0.65·(30,20,10) + 0.35·(235,45,45)
        let png = encode_png(8, 8, 3, &rgb);
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(back.into_raw(), rgb);
    }
}
