//! Image and mask loading exactly as the authors' loader does it (reclmis.md §4.4).
//!
//! Their pipeline is `cv2.imread` → `cv2.resize(…, (224, 224))` (INTER_LINEAR) → `to_tensor`.
//! Decoding goes through the `image` crate; what OpenCV adds on top of plain decoding (BGR order,
//! its 16→8-bit scaling, its colour→grey weights, its fixed-point bilinear resize) is reproduced
//! here bit for bit for PNG, BMP and TIFF. JPEG pixels can differ by a few levels because the
//! two JPEG decoders round their IDCT and chroma upsampling differently.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use rayon::prelude::*;

use super::DataError;
use super::layout::Item;

/// An 8-bit image, rows top to bottom, channels interleaved: `[height, width, channels]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageU8 {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl ImageU8 {
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
pub fn read_bgr(path: &Path) -> Result<ImageU8, DataError> {
    let (img, format) = decode(path)?;
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

/// `cv2.imread(path, 0)` (IMREAD_GRAYSCALE): one channel; colour files are converted with the
/// BT.601 weights in the fixed-point form the file's decoder uses.
pub fn read_grey(path: &Path) -> Result<ImageU8, DataError> {
    let (img, format) = decode(path)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let png = format == ImageFormat::Png;
    // OpenCV's 32-bit BMP path converts in float and truncates; its other paths are fixed point.
    let bmp32 = format == ImageFormat::Bmp && bmp_bit_count(path) == Some(32);
    let data: Vec<u8> = match &img {
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
    let plane = img.width * img.height;
    let mut out = vec![0.0f32; img.channels * plane];
    for (i, px) in img.data.chunks_exact(img.channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + i] = f32::from(v) / 255.0;
        }
    }
    out
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

/// Bits per pixel from a BMP header (`BITMAPCOREHEADER` or the larger `BITMAPINFOHEADER`s).
fn bmp_bit_count(path: &Path) -> Option<u16> {
    use std::io::Read;
    let mut header = [0u8; 30];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    let dib_size = u32::from_le_bytes([header[14], header[15], header[16], header[17]]);
    let at = if dib_size == 12 { 24 } else { 28 };
    Some(u16::from_le_bytes([header[at], header[at + 1]]))
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

/// Decodes by content (not extension), applying the EXIF orientation as `cv2.imread` does.
fn decode(path: &Path) -> Result<(DynamicImage, ImageFormat), DataError> {
    let image_err = |reason: String| DataError::Image {
        path: path.to_path_buf(),
        reason,
    };
    let reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|source| DataError::Io {
            what: "image",
            path: path.to_path_buf(),
            source,
        })?;
    let format = reader
        .format()
        .ok_or_else(|| image_err("not a PNG, JPEG, BMP or TIFF file".into()))?;
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| image_err(e.to_string()))?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| image_err(e.to_string()))?;
    if let Some(orientation) = orientation {
        img.apply_orientation(orientation);
    }
    if img.width() == 0 || img.height() == 0 {
        return Err(image_err("image has no pixels".into()));
    }
    Ok((img, format))
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
mod tests {
    use super::*;
    use ::image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};

    use crate::test_support::shared;

    /// The generator the golden values were made with (the same LCG in Python, top bits kept).
    fn lcg(seed: u64, n: usize, bits: u32) -> Vec<u64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s >> (64 - bits)
            })
            .collect()
    }

    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        })
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reclmis-image-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        dir
    }

    /// `(src_w, src_h, channels, dst_w, dst_h, seed, FNV-1a of the output, sum of the output)`.
    type ResizeCase = (usize, usize, usize, usize, usize, u64, u64, u64);

    #[test]
    fn resize_matches_opencv_bit_for_bit() {
        // (src_w, src_h, channels, dst_w, dst_h, seed, FNV-1a of cv2.resize output, its sum),
        // from opencv-python 4.14 (`cv2.resize(src, (dst_w, dst_h))`) on LCG noise: covers
        // down- and upscaling, the exact-2× INTER_AREA path, one axis unchanged, 1×1 sources and
        // rows whose length is not a multiple of OpenCV's vector width.
        let cases: [ResizeCase; 21] = [
            (260, 300, 3, 224, 224, 1000, 0xc310450795d9806e, 19188699),
            (150, 100, 3, 224, 224, 1001, 0x98800f5b8c6decd5, 19171052),
            (448, 448, 1, 224, 224, 1002, 0xcf4b6eea0ab46c9f, 6405116),
            (448, 448, 3, 224, 224, 1003, 0xcd0677cce7453f3f, 19196530),
            (512, 512, 3, 224, 224, 1004, 0x909238cde0788089, 19165304),
            (300, 224, 1, 224, 224, 1005, 0x904f6d7713a7a3b5, 6392260),
            (53, 37, 1, 224, 224, 1006, 0x16549b25127f3228, 6436341),
            (225, 225, 3, 224, 224, 1007, 0x5c84923d8c0e194c, 19150111),
            (200, 300, 3, 96, 96, 1008, 0x900169936fa2806d, 3522756),
            (70, 50, 1, 64, 64, 1009, 0x577f62d6e617200b, 511262),
            (97, 61, 1, 40, 40, 1010, 0xc84d1406bd228a56, 200737),
            (333, 250, 3, 100, 100, 1011, 0x78b3e592fef7cfd5, 3813862),
            (1, 1, 3, 224, 224, 1012, 0xa4c7802b95f52325, 13748224),
            (2, 3, 1, 5, 7, 1013, 0xebc271fab08c0625, 3986),
            (224, 448, 1, 224, 224, 1014, 0x0ea51474ee784e59, 6419658),
            (1024, 1024, 1, 224, 224, 1015, 0x4146263c66c2410c, 6376859),
            (640, 480, 3, 224, 224, 1016, 0x6fee7ba2f92846e8, 19157665),
            (3, 500, 1, 224, 224, 1017, 0x3a74b36a454a9396, 6613689),
            (230, 230, 1, 224, 224, 1018, 0xde032b845597df25, 6400730),
            (223, 223, 3, 224, 224, 1019, 0x38885f73845bdfe8, 19158313),
            (16, 16, 1, 224, 224, 1020, 0x8b195c0d95752d34, 6058339),
        ];
        for (sw, sh, cn, dw, dh, seed, hash, sum) in cases {
            let src: Vec<u8> = lcg(seed, sw * sh * cn, 8)
                .into_iter()
                .map(|v| v as u8)
                .collect();
            let out = resize_linear_u8(&src, sw, sh, cn, dw, dh);
            assert_eq!(out.len(), dw * dh * cn);
            let got_sum: u64 = out.iter().map(|&v| u64::from(v)).sum();
            assert_eq!(
                (fnv1a(&out), got_sum),
                (hash, sum),
                "{sw}x{sh}x{cn} -> {dw}x{dh}"
            );
        }
    }

    #[test]
    fn resize_by_hand() {
        // 2 → 4 columns: centres at -0.25, 0.25, 0.75, 1.25 source px; borders clamp.
        // 255·1536/2048 = 191.25 and 255·512/2048 = 63.75 through OpenCV's integer rounding.
        assert_eq!(
            resize_linear_u8(&[0, 255], 2, 1, 1, 4, 1),
            [0, 64, 191, 255]
        );
        // Exact 2× reduction: 2×2 means rounded half up (OpenCV's INTER_AREA fast path).
        let src = [0, 1, 10, 20, 2, 1, 30, 41];
        assert_eq!(resize_linear_u8(&src, 4, 2, 1, 2, 1), [1, 25]);
        // Same size: an exact copy.
        let src: Vec<u8> = (0..=255).collect();
        assert_eq!(resize_linear_u8(&src, 16, 16, 1, 16, 16), src);
    }

    /// Writes the same pixels the golden generator used, as `name.ext`.
    fn write_fixtures(dir: &Path) -> Vec<PathBuf> {
        let (w, h) = (53u32, 37u32);
        let n = (w * h) as usize;
        let b8 =
            |seed, c| -> Vec<u8> { lcg(seed, n * c, 8).into_iter().map(|v| v as u8).collect() };
        let b16 =
            |seed, c| -> Vec<u16> { lcg(seed, n * c, 16).into_iter().map(|v| v as u16).collect() };
        let images: Vec<(&str, DynamicImage, &[&str])> = vec![
            (
                "l8",
                ImageBuffer::<Luma<u8>, _>::from_raw(w, h, b8(11, 1))
                    .map(DynamicImage::ImageLuma8)
                    .expect("sized"),
                &["png", "tif", "bmp"],
            ),
            (
                "la8",
                ImageBuffer::<LumaA<u8>, _>::from_raw(w, h, b8(12, 2))
                    .map(DynamicImage::ImageLumaA8)
                    .expect("sized"),
                &["png"],
            ),
            (
                "rgb8",
                ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, b8(13, 3))
                    .map(DynamicImage::ImageRgb8)
                    .expect("sized"),
                &["png", "tif", "bmp"],
            ),
            (
                "rgba8",
                ImageBuffer::<Rgba<u8>, _>::from_raw(w, h, b8(14, 4))
                    .map(DynamicImage::ImageRgba8)
                    .expect("sized"),
                &["png", "tif", "bmp"],
            ),
            (
                "l16",
                ImageBuffer::<Luma<u16>, _>::from_raw(w, h, b16(15, 1))
                    .map(DynamicImage::ImageLuma16)
                    .expect("sized"),
                &["png", "tif"],
            ),
            (
                "rgb16",
                ImageBuffer::<Rgb<u16>, _>::from_raw(w, h, b16(16, 3))
                    .map(DynamicImage::ImageRgb16)
                    .expect("sized"),
                &["png", "tif"],
            ),
            (
                "rgba16",
                ImageBuffer::<Rgba<u16>, _>::from_raw(w, h, b16(17, 4))
                    .map(DynamicImage::ImageRgba16)
                    .expect("sized"),
                &["png", "tif"],
            ),
        ];
        let mut paths = Vec::new();
        for (name, img, exts) in images {
            for ext in exts {
                let path = dir.join(format!("{name}.{ext}"));
                img.save(&path).expect("fixture encodes");
                paths.push(path);
            }
        }
        paths
    }

    #[test]
    fn imread_semantics_match_opencv() {
        // FNV-1a of cv2.imread(f) and cv2.imread(f, 0) (opencv-python 4.14) on these very files:
        // grey replicated, alpha dropped, PNG 16→8 by high byte, TIFF 16-bit colour by /257,
        // colour→grey via libpng's truncating weights (PNG), OpenCV's rounded 14-bit weights
        // (TIFF, 24-bit BMP) or its float path (32-bit BMP).
        let golden: [(&str, u64, u64); 16] = [
            ("l8.png", 0xb26b17f828fb8d7a, 0x8b353c6d297b0c8c),
            ("l8.tif", 0xb26b17f828fb8d7a, 0x8b353c6d297b0c8c),
            ("l8.bmp", 0xb26b17f828fb8d7a, 0x8b353c6d297b0c8c),
            ("la8.png", 0x155ac7f07c1c0f08, 0x3c0876dc6b71465e),
            ("rgb8.png", 0xb22592f715df76df, 0xe9cc8d11965d2cc7),
            ("rgb8.tif", 0xb22592f715df76df, 0xbcf8b8dc7cac2629),
            ("rgb8.bmp", 0xb22592f715df76df, 0xbcf8b8dc7cac2629),
            ("rgba8.png", 0x2d1e6d52a4e79d9c, 0xe5c9a39641e1307d),
            ("rgba8.tif", 0x2d1e6d52a4e79d9c, 0x3e661f259af6dcfc),
            ("rgba8.bmp", 0x2d1e6d52a4e79d9c, 0x3f3979b67b167dfe),
            ("l16.png", 0x0302f61a282bf02f, 0x5f068f42bf0dd177),
            ("l16.tif", 0x0302f61a282bf02f, 0x5f068f42bf0dd177),
            ("rgb16.png", 0x132c41091d07480d, 0xecad994715a5937c),
            ("rgb16.tif", 0x68ad51730d5ab036, 0xb7c718b304dadfaa),
            ("rgba16.png", 0x316584d9d70eb29f, 0x21a59e221026c9d2),
            ("rgba16.tif", 0x8de0237e2ae59539, 0xaef34b72cc04eae5),
        ];
        let dir = scratch_dir("imread");
        let written = write_fixtures(&dir);
        assert_eq!(written.len(), golden.len());
        for (name, colour, grey) in golden {
            let path = dir.join(name);
            let bgr = read_bgr(&path).expect("fixture decodes");
            assert_eq!((bgr.width, bgr.height, bgr.channels), (53, 37, 3), "{name}");
            assert_eq!(fnv1a(&bgr.data), colour, "{name} IMREAD_COLOR");
            let g = read_grey(&path).expect("fixture decodes");
            assert_eq!((g.width, g.height, g.channels), (53, 37, 1), "{name}");
            assert_eq!(fnv1a(&g.data), grey, "{name} IMREAD_GRAYSCALE");
        }
        // Spot values: first pixel of rgb8 is (R, G, B) = the first three LCG bytes of seed 13.
        let rgb: Vec<u8> = lcg(13, 3, 8).into_iter().map(|v| v as u8).collect();
        let bgr = read_bgr(&dir.join("rgb8.png")).expect("fixture decodes");
        assert_eq!(&bgr.data[..3], &[rgb[2], rgb[1], rgb[0]]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn load_image_and_mask_match_opencv_pipeline() {
        let dir = scratch_dir("pipeline");
        write_fixtures(&dir);
        // cv2.resize(cv2.imread("rgb8.png"), (64, 64)).transpose(2, 0, 1): FNV-1a and [:, 10, 20].
        let img = load_image(&dir.join("rgb8.png"), 64).expect("fixture decodes");
        assert_eq!(img.len(), 3 * 64 * 64);
        let bytes: Vec<u8> = img.iter().map(|&v| (v * 255.0).round() as u8).collect();
        assert!(
            img.iter()
                .zip(&bytes)
                .all(|(&v, &b)| v == f32::from(b) / 255.0)
        );
        assert_eq!(fnv1a(&bytes), 0x938948a4305e4e17);
        let at = 10 * 64 + 20;
        assert_eq!(
            [bytes[at], bytes[4096 + at], bytes[2 * 4096 + at]],
            [90, 202, 78]
        );

        // A sparse mask: bilinear + `> 0` grows each dot (cv2 gives the counts below).
        let (w, h) = (53u32, 37u32);
        let dots = ImageBuffer::from_fn(w, h, |x, y| {
            Luma([if (x * 7 + y * 13) % 29 == 0 { 255u8 } else { 0 }])
        });
        let path = dir.join("dots.png");
        dots.save(&path).expect("fixture encodes");
        let source_fg = dots.pixels().filter(|p| p.0[0] > 0).count();
        let up = load_mask(&path, 96).expect("fixture decodes");
        let down = load_mask(&path, 32).expect("fixture decodes");
        assert!(up.iter().chain(&down).all(|&v| v <= 1));
        let count = |m: &[u8]| m.iter().map(|&v| usize::from(v)).sum::<usize>();
        // (cv2.imread(f, 0) → cv2.resize → > 0), opencv-python 4.14.
        assert_eq!(
            (
                source_fg,
                count(&up),
                fnv1a(&up),
                count(&down),
                fnv1a(&down)
            ),
            (68, 1232, 0x347ab18d2274224b, 141, 0x175f19df8103d5fc)
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unreadable_images_name_the_file() {
        let dir = scratch_dir("bad");
        let cases = [
            ("empty.png", &b""[..]),
            ("text.png", &b"this is not an image"[..]),
            (
                "truncated.png",
                &b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10"[..],
            ),
        ];
        for (name, bytes) in cases {
            let path = dir.join(name);
            std::fs::write(&path, bytes).expect("temp dir is writable");
            let err = load_image(&path, 224).expect_err("not an image");
            assert!(matches!(err, DataError::Image { .. }), "{name}: {err:?}");
            assert!(err.to_string().contains(name), "{err}");
        }
        let missing = dir.join("missing.png");
        let err = load_mask(&missing, 224).expect_err("no such file");
        assert!(matches!(err, DataError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.png"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn official_loader_parity() {
        // io.safetensors `image` [4,3,224,224] f32 and `label` [4,224,224] u8 are what the
        // authors' loader made of inputs/ (reclmis.md §4.4); the manifest gives the order.
        for preset in ["qata", "mosmed"] {
            let root = shared().join("reference/official-parity").join(preset);
            let manifest: serde_json::Value = serde_json::from_slice(
                &std::fs::read(root.join("manifest.json")).expect("manifest.json"),
            )
            .expect("manifest is JSON");
            let bytes = std::fs::read(root.join("io.safetensors")).expect("io.safetensors");
            let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
            let image = tensors.tensor("image").expect("image tensor");
            let label = tensors.tensor("label").expect("label tensor");
            assert_eq!(image.shape(), [4, 3, 224, 224]);
            assert_eq!(label.shape(), [4, 224, 224]);
            let want_image: Vec<f32> = image
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let inputs = manifest["inputs"].as_array().expect("inputs list");
            let items: Vec<Item> = inputs
                .iter()
                .map(|input| {
                    let name = input["image"].as_str().expect("image name");
                    let mask = if preset == "qata" {
                        format!("mask_{name}")
                    } else {
                        name.to_string()
                    };
                    Item {
                        image: root.join("inputs/img").join(name),
                        mask: root.join("inputs/labelcol").join(mask),
                        key: String::new(),
                        note: String::new(),
                    }
                })
                .collect();
            let batch = load_batch(&items, 224).expect("parity inputs load");
            let max_abs = batch
                .images
                .iter()
                .zip(&want_image)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert_eq!(max_abs, 0.0, "{preset}: image max abs difference");
            assert_eq!(batch.masks, label.data(), "{preset}: label");
            // Grey PNGs: B, G and R planes are equal, and the masks are not trivial.
            let plane = 224 * 224;
            assert_eq!(batch.images[..plane], batch.images[plane..2 * plane]);
            let fg: usize = batch.masks.iter().map(|&v| usize::from(v)).sum();
            assert!(fg > 0 && fg < batch.masks.len(), "{preset}: {fg}");
            // One by one gives the same as the batch.
            let first = load_image(&items[0].image, 224).expect("loads");
            assert_eq!(first, batch.images[..3 * plane]);
        }
    }
}
