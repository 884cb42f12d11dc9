//! Image and mask loading exactly as the authors' loader does it (docs §4.4).
//!
//! Their pipeline is `cv2.imread` → `cv2.resize(…, (224, 224))` (INTER_LINEAR) → `to_tensor`.
//! Decoding goes through the `image` crate; what OpenCV adds on top of plain decoding (BGR order,
//! its 16→8-bit scaling, its colour→grey weights, its fixed-point bilinear resize) is reproduced
//! here bit for bit for PNG, BMP and TIFF. JPEG pixels can differ by a few levels because the
//! two JPEG decoders round their IDCT and chroma upsampling differently.
//!
//! DICOM and NIfTI files (recognised by content) are read as one 8-bit slice by
//! [`super::medical`]; their grey is replicated to B, G, R like a grey PNG's.

use std::io::{BufRead, Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use rayon::prelude::*;

use super::DataError;
use super::layout::Item;
use super::medical;

/// How a file is read where it holds more than one 2-D image (a NIfTI volume, a multi-frame
/// DICOM); PNG, JPEG, BMP and TIFF ignore it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// The slice (NIfTI: along the third axis) or frame (DICOM) to read; `None` is the middle.
    pub slice: Option<usize>,
}

/// An 8-bit image, rows top to bottom, channels interleaved: `[height, width, channels]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageU8 {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl ImageU8 {
    /// The image as `channels` planes, `[channels, H, W]` (the model's layout): plane `c` holds
    /// channel `c`, or the last channel where the image has fewer (a grey image fills every
    /// plane).
    pub fn to_planes(&self, channels: usize) -> Vec<u8> {
        let plane = self.width * self.height;
        let mut out = vec![0u8; channels * plane];
        for (i, px) in self.data.chunks_exact(self.channels).enumerate() {
            for c in 0..channels {
                out[c * plane + i] = px[c.min(self.channels - 1)];
            }
        }
        out
    }

    /// The inverse of [`ImageU8::to_planes`]: `channels` planes of `width × height` interleaved.
    pub fn from_planes(planes: &[u8], width: usize, height: usize, channels: usize) -> ImageU8 {
        let plane = width * height;
        let data = (0..plane)
            .flat_map(|i| (0..channels).map(move |c| planes[c * plane + i]))
            .collect();
        ImageU8 {
            width,
            height,
            channels,
            data,
        }
    }

    /// Resized with OpenCV's INTER_LINEAR (see [`resize_linear_u8`]).
    pub fn resized(&self, width: usize, height: usize) -> ImageU8 {
        ImageU8 {
            width,
            height,
            channels: self.channels,
            data: resize_linear_u8(
                &self.data,
                self.width,
                self.height,
                self.channels,
                width,
                height,
            ),
        }
    }
}

/// `cv2.imread(path)` (IMREAD_COLOR): 3 channels in **B, G, R** order; grey is replicated, alpha
/// dropped (not composited), 16-bit scaled to 8 bits as OpenCV does for the file's format.
/// DICOM and NIfTI files give their middle slice (see [`read_bgr_with`]).
pub fn read_bgr(path: &Path) -> Result<ImageU8, DataError> {
    read_bgr_with(path, &ReadOptions::default())
}

/// [`read_bgr`] with the slice of a DICOM or NIfTI file chosen by `opts`.
pub fn read_bgr_with(path: &Path, opts: &ReadOptions) -> Result<ImageU8, DataError> {
    decode_file(path, opts).map(|d| d.into_bgr(path))?
}

/// [`read_bgr_with`] on a file's bytes in memory (an upload): PNG, JPEG, BMP, TIFF, DICOM or
/// NIfTI (`.nii`, or `.nii.gz` when `name` ends so), told apart by content. `name` names the
/// file in errors.
pub fn read_bgr_bytes(name: &str, bytes: &[u8], opts: &ReadOptions) -> Result<ImageU8, DataError> {
    let path = Path::new(name);
    decode_bytes(path, bytes, opts).map(|d| d.into_bgr(path))?
}

/// `cv2.imread(path, 0)` (IMREAD_GRAYSCALE): one channel; colour files are converted with the
/// BT.601 weights in the fixed-point form the file's decoder uses. DICOM and NIfTI files give
/// their middle slice (see [`read_grey_with`]).
pub fn read_grey(path: &Path) -> Result<ImageU8, DataError> {
    read_grey_with(path, &ReadOptions::default())
}

/// [`read_grey`] with the slice of a DICOM or NIfTI file chosen by `opts`.
pub fn read_grey_with(path: &Path, opts: &ReadOptions) -> Result<ImageU8, DataError> {
    decode_file(path, opts).map(|d| d.into_grey(path))?
}

/// A file decoded, before OpenCV's conversions to B, G, R or grey.
enum Decoded {
    Raster {
        img: DynamicImage,
        format: ImageFormat,
        /// A 32-bit BMP, which OpenCV converts to grey in float.
        bmp32: bool,
    },
    /// One 8-bit slice of a DICOM or NIfTI file: grey, or B, G, R.
    Medical(ImageU8),
}

impl Decoded {
    fn into_bgr(self, path: &Path) -> Result<ImageU8, DataError> {
        match self {
            Decoded::Raster { img, format, .. } => raster_bgr(path, &img, format),
            Decoded::Medical(img) if img.channels == 3 => Ok(img),
            Decoded::Medical(img) => Ok(ImageU8 {
                data: img.data.iter().flat_map(|&v| [v, v, v]).collect(),
                channels: 3,
                ..img
            }),
        }
    }

    fn into_grey(self, path: &Path) -> Result<ImageU8, DataError> {
        match self {
            Decoded::Raster { img, format, bmp32 } => raster_grey(path, &img, format, bmp32),
            Decoded::Medical(img) if img.channels == 1 => Ok(img),
            Decoded::Medical(img) => Ok(ImageU8 {
                data: img
                    .data
                    .chunks_exact(3)
                    .map(|p| opencv_bgr2gray(p[0], p[1], p[2]))
                    .collect(),
                channels: 1,
                ..img
            }),
        }
    }
}

/// [`read_bgr`] of a decoded PNG, JPEG, BMP or TIFF.
fn raster_bgr(path: &Path, img: &DynamicImage, format: ImageFormat) -> Result<ImageU8, DataError> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mut data = Vec::with_capacity(width * height * 3);
    match &img {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_) => {
            for v in img.to_luma8().into_raw() {
                data.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) => {
            for v in img.to_luma16().into_raw() {
                let v = grey16_to_u8(v);
                data.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_) => {
            for p in img.to_rgb16().pixels() {
                let [r, g, b] = p.0.map(|v| colour16_to_u8(v, format));
                data.extend_from_slice(&[b, g, r]);
            }
        }
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => {
            for p in img.to_rgb8().pixels() {
                let [r, g, b] = p.0;
                data.extend_from_slice(&[b, g, r]);
            }
        }
        other => return Err(unsupported(path, other)),
    }
    Ok(ImageU8 {
        width,
        height,
        channels: 3,
        data,
    })
}

/// [`read_grey`] of a decoded PNG, JPEG, BMP or TIFF; `bmp32` for a 32-bit BMP.
fn raster_grey(
    path: &Path,
    img: &DynamicImage,
    format: ImageFormat,
    bmp32: bool,
) -> Result<ImageU8, DataError> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let png = format == ImageFormat::Png;
    let data: Vec<u8> = match img {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_) => img.to_luma8().into_raw(),
        DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) => img
            .to_luma16()
            .into_raw()
            .into_iter()
            .map(grey16_to_u8)
            .collect(),
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_) => img
            .to_rgb16()
            .pixels()
            .map(|p| {
                let [r, g, b] = p.0;
                if png {
                    // libpng converts at 16 bits (rounded), then keeps the high byte.
                    let y = (LIBPNG_R * u32::from(r)
                        + LIBPNG_G * u32::from(g)
                        + LIBPNG_B * u32::from(b)
                        + (1 << 14))
                        >> 15;
                    (y >> 8) as u8
                } else {
                    let [r, g, b] = [r, g, b].map(|v| colour16_to_u8(v, format));
                    opencv_bgr2gray(b, g, r)
                }
            })
            .collect(),
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => img
            .to_rgb8()
            .pixels()
            .map(|p| {
                let [r, g, b] = p.0;
                if png {
                    // libpng's `png_set_rgb_to_gray` in its "fast" 8-bit form truncates.
                    ((LIBPNG_R * u32::from(r) + LIBPNG_G * u32::from(g) + LIBPNG_B * u32::from(b))
                        >> 15) as u8
                } else if bmp32 {
                    bgra2gray_f32(b, g, r)
                } else {
                    opencv_bgr2gray(b, g, r)
                }
            })
            .collect(),
        other => return Err(unsupported(path, other)),
    };
    Ok(ImageU8 {
        width,
        height,
        channels: 1,
        data,
    })
}

/// One image as the model sees it: `[3, size, size]` float32, channel 0 = **B**, values
/// `u8 / 255`, after `cv2.resize` to `size × size`.
pub fn load_image(path: &Path, size: usize) -> Result<Vec<f32>, DataError> {
    // paper-parity: §4.4 / §7 quirk 6 — BGR order and plain /255, no mean/std.
    Ok(hwc_to_chw_unit(&read_bgr(path)?.resized(size, size)))
}

/// One mask as the loss sees it: `[size, size]`, 1 where the resized grey value is > 0.
pub fn load_mask(path: &Path, size: usize) -> Result<Vec<u8>, DataError> {
    // paper-parity: §4.4 — bilinear resize, then `> 0`, which slightly dilates resized edges.
    let grey = read_grey(path)?.resized(size, size);
    Ok(grey.data.into_iter().map(|v| u8::from(v > 0)).collect())
}

/// `[H, W, C]` u8 → `[C, H, W]` f32 in [0, 1], as torchvision's `to_tensor`.
pub fn hwc_to_chw_unit(img: &ImageU8) -> Vec<f32> {
    img.to_planes(img.channels)
        .into_iter()
        .map(|v| f32::from(v) / 255.0)
        .collect()
}

/// Images and masks of a batch, decoded in parallel on rayon's pool.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, 3, size, size]`, BGR / 255.
    pub images: Vec<f32>,
    /// `[B, size, size]`, 0/1.
    pub masks: Vec<u8>,
    pub size: usize,
    /// `(width, height)` of each image file and mask file before resizing, so a caller can warn
    /// when the two differ.
    pub source_sizes: Vec<[(usize, usize); 2]>,
}

/// Loads `items` (images and masks) at `size × size`; the first failure in item order is returned.
pub fn load_batch(items: &[Item], size: usize) -> Result<Batch, DataError> {
    let loaded: Vec<_> = items
        .par_iter()
        .map(|item| -> Result<_, DataError> {
            let img = read_bgr(&item.image)?;
            let mask = read_grey(&item.mask)?;
            let sizes = [(img.width, img.height), (mask.width, mask.height)];
            let img = hwc_to_chw_unit(&img.resized(size, size));
            let mask: Vec<u8> = mask
                .resized(size, size)
                .data
                .into_iter()
                .map(|v| u8::from(v > 0))
                .collect();
            Ok((img, mask, sizes))
        })
        .collect();
    let mut batch = Batch {
        images: Vec::with_capacity(items.len() * 3 * size * size),
        masks: Vec::with_capacity(items.len() * size * size),
        size,
        source_sizes: Vec::with_capacity(items.len()),
    };
    for result in loaded {
        let (img, mask, sizes) = result?;
        batch.images.extend_from_slice(&img);
        batch.masks.extend_from_slice(&mask);
        batch.source_sizes.push(sizes);
    }
    Ok(batch)
}

/// `cv2.resize(src, (dst_w, dst_h))` with the default INTER_LINEAR on 8-bit data, bit for bit.
///
/// `src` is `[src_h, src_w, channels]`; the result is `[dst_h, dst_w, channels]`. What OpenCV
/// does and this reproduces: same size → a copy; an exact 2× reduction in both directions →
/// its INTER_AREA fast path (2×2 means, rounded half up); otherwise half-pixel-centred bilinear
/// with 11-bit fixed-point weights (rounded half to even from f32), clamped borders, a
/// horizontal pass in exact integers and OpenCV's truncating 8-bit vertical pass.
///
/// # Panics
/// If a size is zero or `src` is not `src_w · src_h · channels` bytes long.
pub fn resize_linear_u8(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    channels: usize,
    dst_w: usize,
    dst_h: usize,
) -> Vec<u8> {
    assert!(
        src_w > 0 && src_h > 0 && channels > 0 && dst_w > 0 && dst_h > 0,
        "resize sizes must be non-zero"
    );
    assert_eq!(
        src.len(),
        src_w * src_h * channels,
        "source buffer must be [src_h, src_w, channels]"
    );
    if (src_w, src_h) == (dst_w, dst_h) {
        return src.to_vec();
    }
    let inv_scale_x = dst_w as f64 / src_w as f64;
    let inv_scale_y = dst_h as f64 / src_h as f64;
    let (scale_x, scale_y) = (1.0 / inv_scale_x, 1.0 / inv_scale_y);
    let area_fast = (scale_x - scale_x.round_ties_even()).abs() < f64::EPSILON
        && (scale_y - scale_y.round_ties_even()).abs() < f64::EPSILON;
    if area_fast && scale_x.round_ties_even() == 2.0 && scale_y.round_ties_even() == 2.0 {
        return halve_area(src, src_w, channels, dst_w, dst_h);
    }

    let cn = channels;
    let (xofs, alpha, xmax) = horizontal_taps(scale_x, src_w, dst_w);
    let row_len = dst_w * cn;
    // The horizontal pass of source row `sy`: `pixel · 2048` weighted sums, exact in i32.
    let hresize = |sy: usize, out: &mut [i32]| {
        let row = &src[sy * src_w * cn..(sy + 1) * src_w * cn];
        for dx in 0..dst_w {
            let sx = xofs[dx] * cn;
            let [a0, a1] = alpha[dx];
            for c in 0..cn {
                out[dx * cn + c] = if dx < xmax {
                    i32::from(row[sx + c]) * a0 + i32::from(row[sx + cn + c]) * a1
                } else {
                    i32::from(row[sx + c]) * RESIZE_ONE
                };
            }
        }
    };
    let mut rows = [vec![0i32; row_len], vec![0i32; row_len]];
    let mut cached: [Option<usize>; 2] = [None, None];
    let mut dst = vec![0u8; dst_h * row_len];
    for dy in 0..dst_h {
        let fy = ((dy as f64 + 0.5) * scale_y - 0.5) as f32;
        let sy = fy.floor();
        let fy = fy - sy;
        let sy = sy as i64;
        let beta = [coefficient(1.0 - fy), coefficient(fy)];
        let wanted = [0, 1].map(|k| (sy + k).clamp(0, src_h as i64 - 1) as usize);
        if cached[0] != Some(wanted[0]) {
            if cached[1] == Some(wanted[0]) {
                rows.swap(0, 1);
                cached.swap(0, 1);
            } else {
                hresize(wanted[0], &mut rows[0]);
                cached[0] = Some(wanted[0]);
            }
        }
        if cached[1] != Some(wanted[1]) {
            if wanted[1] == wanted[0] {
                let (first, second) = rows.split_at_mut(1);
                second[0].copy_from_slice(&first[0]);
            } else {
                hresize(wanted[1], &mut rows[1]);
            }
            cached[1] = Some(wanted[1]);
        }
        let out = &mut dst[dy * row_len..(dy + 1) * row_len];
        let (s0, s1) = (&rows[0], &rows[1]);
        for x in 0..row_len {
            // OpenCV's 8-bit vertical pass (its SIMD loop and its scalar specialisation alike):
            // drop 4 bits, keep the high 16 bits of each product, round away the last 2 bits.
            let t = (((s0[x] >> 4) * beta[0]) >> 16) + (((s1[x] >> 4) * beta[1]) >> 16);
            out[x] = ((t + 2) >> 2).clamp(0, 255) as u8;
        }
    }
    dst
}

/// OpenCV's `INTER_RESIZE_COEF_BITS`: bilinear weights are integers summing to about 2048.
const RESIZE_BITS: i32 = 11;
const RESIZE_ONE: i32 = 1 << RESIZE_BITS;

/// `saturate_cast<short>(w · 2048)`: round half to even, in f32 as OpenCV computes it.
fn coefficient(w: f32) -> i32 {
    (w * RESIZE_ONE as f32)
        .round_ties_even()
        .clamp(i16::MIN as f32, i16::MAX as f32) as i32
}

/// Per destination column: left source column, its two weights, and the first column from which
/// OpenCV reads one source pixel only (the right border).
fn horizontal_taps(scale_x: f64, src_w: usize, dst_w: usize) -> (Vec<usize>, Vec<[i32; 2]>, usize) {
    let mut xofs = Vec::with_capacity(dst_w);
    let mut alpha = Vec::with_capacity(dst_w);
    let mut xmax = dst_w;
    for dx in 0..dst_w {
        let fx = ((dx as f64 + 0.5) * scale_x - 0.5) as f32;
        let mut sx = fx.floor() as i64;
        let mut fx = fx - sx as f32;
        if sx < 0 {
            (sx, fx) = (0, 0.0);
        }
        if sx + 1 >= src_w as i64 {
            xmax = xmax.min(dx);
            (sx, fx) = (src_w as i64 - 1, 0.0);
        }
        xofs.push(sx as usize);
        alpha.push([coefficient(1.0 - fx), coefficient(fx)]);
    }
    (xofs, alpha, xmax)
}

/// INTER_AREA for an exact 2× reduction: `(a + b + c + d + 2) >> 2` over each 2×2 block.
fn halve_area(src: &[u8], src_w: usize, cn: usize, dst_w: usize, dst_h: usize) -> Vec<u8> {
    let src_row = src_w * cn;
    let mut dst = Vec::with_capacity(dst_w * dst_h * cn);
    for dy in 0..dst_h {
        let top = &src[2 * dy * src_row..(2 * dy + 1) * src_row];
        let bottom = &src[(2 * dy + 1) * src_row..(2 * dy + 2) * src_row];
        for dx in 0..dst_w {
            for c in 0..cn {
                let (i, j) = (2 * dx * cn + c, (2 * dx + 1) * cn + c);
                let sum = u16::from(top[i]) + u16::from(top[j]) + u16::from(bottom[i]);
                dst.push(((sum + u16::from(bottom[j]) + 2) >> 2) as u8);
            }
        }
    }
    dst
}

/// libpng's `png_set_rgb_to_gray(…, 0.299, 0.587)` weights in 1/32768 (blue takes the rest).
const LIBPNG_R: u32 = 9797;
const LIBPNG_G: u32 = 19234;
const LIBPNG_B: u32 = 32768 - LIBPNG_R - LIBPNG_G;

/// OpenCV's own BGR→grey (BMP, TIFF, JPEG paths): BT.601 in 14-bit fixed point, rounded.
fn opencv_bgr2gray(b: u8, g: u8, r: u8) -> u8 {
    ((1868 * u32::from(b) + 9617 * u32::from(g) + 4899 * u32::from(r) + (1 << 13)) >> 14) as u8
}

/// OpenCV's 32-bit BMP path: BT.601 in float32, truncated (matches on 10⁶ random pixels).
fn bgra2gray_f32(b: u8, g: u8, r: u8) -> u8 {
    (0.299f32 * f32::from(r) + 0.587f32 * f32::from(g) + 0.114f32 * f32::from(b)) as u8
}

/// Bits per pixel from a BMP file's first bytes (`BITMAPCOREHEADER` or the larger
/// `BITMAPINFOHEADER`s).
fn bmp_bit_count(head: &[u8]) -> Option<u16> {
    let header = head.get(..30)?;
    let dib_size = u32::from_le_bytes([header[14], header[15], header[16], header[17]]);
    let at = if dib_size == 12 { 24 } else { 28 };
    Some(u16::from_le_bytes([header[at], header[at + 1]]))
}

/// Pixels handed over in memory (a numpy array, an upload), rows top to bottom, channels
/// interleaved.
#[derive(Clone, Copy, Debug)]
pub enum Pixels<'a> {
    U8(&'a [u8]),
    /// Kept to the high byte, as a 16-bit PNG file is read.
    U16(&'a [u16]),
    /// In [0, 1]; scaled by 255 and rounded.
    F32(&'a [f32]),
}

/// An in-memory `height × width` image of 1 (grey) or 3 (R, G, B) channels as the model's
/// B, G, R [`ImageU8`], converted as [`read_bgr`] converts a file. An error says what is wrong
/// with the shape or the values.
pub fn image_from_pixels(
    pixels: Pixels,
    height: usize,
    width: usize,
    channels: usize,
) -> Result<ImageU8, String> {
    if !matches!(channels, 1 | 3) {
        return Err(format!(
            "an image has 1 (grey) or 3 (RGB) channels, not {channels}"
        ));
    }
    if height == 0 || width == 0 {
        return Err(format!("the image is empty ({height}×{width})"));
    }
    let n = height * width * channels;
    let len = match pixels {
        Pixels::U8(v) => v.len(),
        Pixels::U16(v) => v.len(),
        Pixels::F32(v) => v.len(),
    };
    if len != n {
        return Err(format!(
            "{len} values do not make a {height}×{width}×{channels} image"
        ));
    }
    let values: Vec<u8> = match pixels {
        Pixels::U8(v) => v.to_vec(),
        Pixels::U16(v) => v.iter().map(|&x| grey16_to_u8(x)).collect(),
        Pixels::F32(v) => {
            if let Some(bad) = v.iter().find(|x| !(0.0..=1.0).contains(*x)) {
                return Err(format!("float images hold values in [0, 1]; found {bad}"));
            }
            v.iter().map(|&x| (x * 255.0).round() as u8).collect()
        }
    };
    let data = if channels == 1 {
        values.iter().flat_map(|&g| [g, g, g]).collect()
    } else {
        values
            .chunks_exact(3)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect()
    };
    Ok(ImageU8 {
        width,
        height,
        channels: 3,
        data,
    })
}

/// 16-bit grey → 8 bits: OpenCV keeps the high byte (PNG via `png_set_strip_16`, TIFF alike).
fn grey16_to_u8(v: u16) -> u8 {
    (v >> 8) as u8
}

/// 16-bit colour → 8 bits: PNG keeps the high byte; OpenCV's TIFF reader rounds `v / 257`.
fn colour16_to_u8(v: u16, format: ImageFormat) -> u8 {
    if format == ImageFormat::Tiff {
        ((u32::from(v) + 128) / 257) as u8
    } else {
        (v >> 8) as u8
    }
}

/// The most decoded bytes an image may claim (a 20 000 × 20 000 RGB film is 1.2 GB).
pub(crate) const MAX_DECODED_BYTES: u64 = 1_500_000_000;

/// How many first bytes tell every supported format apart (a NIfTI-1 header is 348).
const SNIFF_BYTES: u64 = 348;

/// Decodes the file at `path` by content (not extension). Only a DICOM or NIfTI file is read
/// into memory whole; the others are streamed by their decoder.
fn decode_file(path: &Path, opts: &ReadOptions) -> Result<Decoded, DataError> {
    let io = |source| DataError::Io {
        what: "image",
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut head = Vec::new();
    (&mut file)
        .take(SNIFF_BYTES)
        .read_to_end(&mut head)
        .map_err(io)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if let Some(format) = medical::sniff(&name, &head) {
        let len = file.metadata().map_err(io)?.len();
        if len > MAX_DECODED_BYTES {
            return Err(DataError::Image {
                path: path.to_path_buf(),
                reason: format!(
                    "the file is {} MB, more than the {} MB reclmis decodes",
                    len / 1_000_000,
                    MAX_DECODED_BYTES / 1_000_000
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        return medical::decode(path, format, &bytes, opts).map(Decoded::Medical);
    }
    let reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(io)?;
    decode_raster(path, reader, &head)
}

/// [`decode_file`] on a file's bytes in memory; `path` names it in errors.
fn decode_bytes(path: &Path, bytes: &[u8], opts: &ReadOptions) -> Result<Decoded, DataError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if let Some(format) = medical::sniff(&name, bytes) {
        return medical::decode(path, format, bytes, opts).map(Decoded::Medical);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    decode_raster(path, reader, bytes)
}

/// Decodes a PNG, JPEG, BMP or TIFF, applying the EXIF orientation as `cv2.imread` does; `head`
/// holds the file's first bytes.
fn decode_raster<R: BufRead + Seek>(
    path: &Path,
    reader: ImageReader<R>,
    head: &[u8],
) -> Result<Decoded, DataError> {
    let image_err = |reason: String| DataError::Image {
        path: path.to_path_buf(),
        reason,
    };
    let format = reader
        .format()
        .ok_or_else(|| image_err("not a PNG, JPEG, BMP, TIFF, DICOM or NIfTI file".into()))?;
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| image_err(e.to_string()))?;
    // A header may claim any size; nothing is allocated for more than reclmis would ever read.
    let (w, h) = decoder.dimensions();
    let bytes = decoder.total_bytes();
    if bytes > MAX_DECODED_BYTES {
        return Err(image_err(format!(
            "the file claims a {w}×{h} image ({} MB decoded), more than the {} MB reclmis decodes",
            bytes / 1_000_000,
            MAX_DECODED_BYTES / 1_000_000
        )));
    }
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| image_err(e.to_string()))?;
    if let Some(orientation) = orientation {
        img.apply_orientation(orientation);
    }
    if img.width() == 0 || img.height() == 0 {
        return Err(image_err("image has no pixels".into()));
    }
    // OpenCV's 32-bit BMP path converts to grey in float and truncates; its others are fixed point.
    let bmp32 = format == ImageFormat::Bmp && bmp_bit_count(head) == Some(32);
    Ok(Decoded::Raster { img, format, bmp32 })
}

fn unsupported(path: &Path, img: &DynamicImage) -> DataError {
    DataError::Image {
        path: PathBuf::from(path),
        reason: format!(
            "unsupported pixel format {:?} (expected 8- or 16-bit grey, RGB or RGBA)",
            img.color()
        ),
    }
}

#[cfg(test)]
mod tests;
