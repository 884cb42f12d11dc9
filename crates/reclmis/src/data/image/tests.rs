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
    let b8 = |seed, c| -> Vec<u8> { lcg(seed, n * c, 8).into_iter().map(|v| v as u8).collect() };
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
    // authors' loader made of inputs/ (docs §4.4); the manifest gives the order.
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

#[test]
fn in_memory_pixels_convert_as_files_do() {
    // One RGB pixel → B, G, R; grey replicated; 16 bits keep the high byte; floats scale.
    let rgb = image_from_pixels(Pixels::U8(&[10, 20, 30]), 1, 1, 3).unwrap();
    assert_eq!(rgb.data, [30, 20, 10]);
    let grey = image_from_pixels(Pixels::U16(&[0x1234, 0xff00]), 1, 2, 1).unwrap();
    assert_eq!(grey.data, [0x12, 0x12, 0x12, 0xff, 0xff, 0xff]);
    let f = image_from_pixels(Pixels::F32(&[0.5]), 1, 1, 1).unwrap();
    assert_eq!(f.data, [128, 128, 128]);
    assert!(
        image_from_pixels(Pixels::F32(&[1.5]), 1, 1, 1)
            .unwrap_err()
            .contains("[0, 1]")
    );
    assert!(
        image_from_pixels(Pixels::U8(&[1, 2]), 1, 1, 3)
            .unwrap_err()
            .contains("1×1×3")
    );
    assert!(
        image_from_pixels(Pixels::U8(&[1; 4]), 1, 1, 4)
            .unwrap_err()
            .contains("channels")
    );
}

/// Found by the png fuzz target (bench/results/fuzz-20261205-122921): 1,192 bytes whose header
/// claims a 517 GB image. Refused before anything is allocated, naming the file.
#[test]
fn a_header_claiming_a_huge_image_is_refused_before_allocating() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz-png-huge-header.png");
    let msg = read_bgr(&path).unwrap_err().to_string();
    assert!(
        msg.contains("MB decoded") && msg.contains("fuzz-png-huge-header.png"),
        "{msg}"
    );
    assert!(load_mask(&path, 32).is_err());
}
