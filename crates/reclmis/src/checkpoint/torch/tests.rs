use super::archive::{TensorSpec, materialise_view};
use super::*;
use std::fs::File;
use std::io::Write;

use crate::test_support::shared;

fn parity(preset: &str) -> PathBuf {
    shared().join(format!(
        "reference/official-parity/{preset}/best_model-RecLMIS.pth.tar"
    ))
}

fn clip_formats() -> PathBuf {
    shared().join("reference/clip-formats")
}

/// A fresh folder per test (tests run in parallel).
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reclmis-torch-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Builds protocol-2 pickles the way `torch.save` writes them.
struct Pk(Vec<u8>);

impl Pk {
    fn new() -> Self {
        Pk(vec![0x80, 2])
    }
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.op(s.as_bytes())
    }
    fn int(&mut self, i: i32) -> &mut Self {
        self.0.push(b'J');
        self.op(&i.to_le_bytes())
    }
    /// `LONG1` with 8 bytes: integers past `i32`.
    fn long(&mut self, i: i64) -> &mut Self {
        self.op(&[0x8a, 8]).op(&i.to_le_bytes())
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn ints(&mut self, v: &[i32]) -> &mut Self {
        self.op(b"(");
        for &i in v {
            self.int(i);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(
        &mut self,
        ty: &str,
        key: &str,
        numel: i32,
        offset: i32,
        size: &[i32],
        stride: &[i32],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
        self.str("storage")
            .global("torch", ty)
            .str(key)
            .str("cpu")
            .int(numel);
        self.op(b"tQ").int(offset).ints(size).ints(stride);
        self.op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")Rt")
            .op(b"R")
    }
}

fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let mut z = zip::ZipWriter::new(File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `{'epoch': 3, 'state_dict': {<entries>}}` with `entries` written by `f`.
fn checkpoint_pickle(f: impl FnOnce(&mut Pk)) -> Vec<u8> {
    let mut p = Pk::new();
    p.op(b"}(").str("epoch").int(3).str("state_dict").op(b"}(");
    f(&mut p);
    p.op(b"uu.");
    p.0
}

fn reference_tsv(preset: &str) -> Vec<(String, Vec<usize>, usize, String)> {
    let path = shared().join(format!("reference/reclmis-{preset}-state-dict.tsv"));
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let shape = if f[1].is_empty() || f[1] == "scalar" || f[1] == "()" {
                vec![]
            } else {
                f[1].split('x').map(|d| d.parse().unwrap()).collect()
            };
            (
                f[0].to_owned(),
                shape,
                f[2].parse().unwrap(),
                f[3].to_owned(),
            )
        })
        .collect()
}

fn check_parity_checkpoint(preset: &str, keys: usize) {
    let ck = read_checkpoint_with_meta(&parity(preset)).unwrap();
    let sd = &ck.state_dict;
    let want = reference_tsv(preset);
    assert_eq!(want.len(), keys);
    assert_eq!(sd.len(), keys);
    for ((key, t), (wkey, wshape, wnumel, wdtype)) in sd.tensors.iter().zip(&want) {
        assert_eq!(key, wkey, "file order");
        assert_eq!(&t.shape, wshape, "{key}");
        assert_eq!(t.numel(), *wnumel, "{key}");
        assert_eq!(t.data.len(), *wnumel, "{key}");
        let dtype = match wdtype.as_str() {
            "float32" => DType::F32,
            "int64" => DType::I64,
            other => panic!("{other}"),
        };
        assert_eq!(t.dtype, dtype, "{key}");
        assert_eq!(t.ints.is_some(), dtype == DType::I64, "{key}");
    }
    // Block order of docs §6.
    let mut blocks: Vec<&str> = Vec::new();
    for k in sd.keys() {
        let b = k.split('.').next().unwrap();
        if blocks.last() != Some(&b) {
            blocks.push(b);
        }
    }
    let order = [
        "inc",
        "interact",
        "down1",
        "down2",
        "down3",
        "down4",
        "up4",
        "up3",
        "up2",
        "up1",
        "outc",
        "text_module4",
        "clip",
        "mlp_woi",
        "mlp_visual",
        "rec_text_trans1",
        "rec_img_trans1",
    ];
    assert_eq!(blocks, order);
    let mut clip: Vec<&str> = Vec::new();
    for k in sd.keys().filter_map(|k| k.strip_prefix("clip.")) {
        let b = k.split('.').next().unwrap();
        if clip.last() != Some(&b) {
            clip.push(b);
        }
    }
    let clip_order = [
        "positional_embedding",
        "text_projection",
        "logit_scale",
        "visual",
        "transformer",
        "token_embedding",
        "ln_final",
    ];
    assert_eq!(clip, clip_order);

    // num_batches_tracked: int64, exact (BN statistics from 1000 batches' worth of updates).
    let nbt = sd.get("inc.norm.num_batches_tracked").unwrap();
    assert_eq!((nbt.dtype, nbt.shape.as_slice()), (DType::I64, &[][..]));
    assert_eq!(nbt.ints.as_deref(), Some(&[1000i64][..]));
    assert_eq!(nbt.data, vec![1000.0]);
    let n_nbt = sd
        .keys()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .count();
    assert_eq!(n_nbt, 18);

    let ls = sd.get("clip.logit_scale").unwrap();
    assert!(ls.shape.is_empty());
    assert!((ls.data[0] - 100f32.ln()).abs() < 1e-6, "{}", ls.data[0]);

    assert_eq!(ck.epoch, Some(41));
    assert_eq!(ck.best_model, Some(true));
    assert_eq!(ck.model.as_deref(), Some("RecLMIS"));
    assert_eq!(ck.val_loss, Some(f64::from(0.2345f32)));
}

#[test]
fn qata_checkpoint_matches_reference_keys() {
    check_parity_checkpoint("qata", 771);
}

#[test]
fn filtered_read_skips_unused_towers() {
    let keep = |k: &str| !k.starts_with("clip.") && !k.starts_with("rec_");
    let ck = read_checkpoint_filtered(&parity("qata"), keep).unwrap();
    let want: Vec<_> = reference_tsv("qata")
        .into_iter()
        .filter(|(k, ..)| keep(k))
        .map(|(k, ..)| k)
        .collect();
    // 771 − 302 CLIP − 2·2·4·18 reconstructor keys.
    assert_eq!(want.len(), 771 - 302 - 288);
    assert_eq!(ck.state_dict.keys().collect::<Vec<_>>(), want);
    assert_eq!(ck.epoch, Some(41));
}

#[test]
fn mosmed_checkpoint_matches_reference_keys() {
    check_parity_checkpoint("mosmed", 699);
}

/// Element [i, j…] of a large parity tensor is `s[offset + 2·i + 3·flat(j)]` (parity README),
/// leading 1-dims skipped; checked against the storage bytes read straight from the zip.
#[test]
fn strided_views_follow_the_parity_rule() {
    let path = parity("qata");
    let keys = [
        "interact.attn_text.in_proj_weight",
        "interact.embeddings.position_embeddings",
        "clip.visual.conv1.weight",
        "down1.nConvs.0.conv.weight",
    ];
    let sd = read_checkpoint_filtered(&path, |k| {
        keys.contains(&k) || k == "clip.token_embedding.weight"
    })
    .unwrap()
    .state_dict;
    assert_eq!(sd.len(), 5);
    let mut archive = Archive::open(&path).unwrap();
    let root = archive.data_pkl().unwrap();
    let entries = root.get("state_dict").unwrap();
    for key in keys {
        let spec = tensor_spec(entries.get(key).unwrap())
            .ok()
            .flatten()
            .unwrap();
        let raw = archive
            .entry(&format!("data/{}", spec.storage))
            .unwrap()
            .unwrap();
        let s: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(s.len(), spec.storage_numel);
        let t = sd.get(key).unwrap();
        let lead = t.shape.iter().take_while(|&&n| n == 1).count();
        let dims = &t.shape[lead..];
        let inner: usize = dims[1..].iter().product();
        assert!(t.numel() > 4096 && inner > 1, "{key}");
        assert!(
            spec.strides[..lead].iter().all(|&x| x == 0),
            "{key}: stride 0 on leading 1s"
        );
        for i in 0..dims[0] {
            for j in 0..inner {
                let want = s[spec.offset + 2 * i + 3 * j];
                assert_eq!(
                    t.data[i * inner + j].to_bits(),
                    want.to_bits(),
                    "{key}[{i}, {j}]"
                );
            }
        }
    }
    // The embedding table is a view too, with rows 3 apart (not the README's 2·i + 3·j).
    let emb = sd.get("clip.token_embedding.weight").unwrap();
    let spec = tensor_spec(entries.get("clip.token_embedding.weight").unwrap())
        .ok()
        .flatten()
        .unwrap();
    assert_eq!(
        (spec.shape.as_slice(), spec.strides.as_slice()),
        (&[49408, 512][..], &[3, 1][..])
    );
    let raw = archive
        .entry(&format!("data/{}", spec.storage))
        .unwrap()
        .unwrap();
    for (i, j) in [
        (0, 0),
        (1, 0),
        (1, 511),
        (49407, 0),
        (49407, 511),
        (12345, 77),
    ] {
        let at = 4 * (3 * i + j);
        let want = f32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        assert_eq!(emb.data[i * 512 + j].to_bits(), want.to_bits());
    }
}

/// Offsets, transposes, stride-0 broadcasts, one storage shared by several views, every dtype,
/// `module.` prefixes and a bare state dict, on a hand-written checkpoint.
#[test]
fn views_dtypes_and_shared_storage() {
    let dir = temp_dir("views");
    let s: Vec<f32> = (0..10).map(|i| i as f32 + 0.5).collect();
    let half: Vec<u8> = [1.5f32, -2.0, 65504.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let bf: Vec<u8> = [1.5f32, -3.0e38]
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let f64s: Vec<u8> = [0.1f64, -7.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let i64s: Vec<u8> = [i64::MAX, -5]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let i32s: Vec<u8> = [-1i32, 7, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
    let pkl = checkpoint_pickle(|p| {
        p.str("module.rows")
            .tensor("FloatStorage", "0", 10, 2, &[2, 3], &[3, 1]);
        p.str("cols")
            .tensor("FloatStorage", "0", 10, 2, &[3, 2], &[1, 3]);
        p.str("bcast")
            .tensor("FloatStorage", "0", 10, 1, &[2, 3], &[0, 1]);
        p.str("scalar").tensor("FloatStorage", "0", 10, 9, &[], &[]);
        p.str("empty")
            .tensor("FloatStorage", "0", 10, 0, &[0, 4], &[4, 1]);
        p.str("half").tensor("HalfStorage", "1", 3, 0, &[3], &[1]);
        p.str("bf16")
            .tensor("BFloat16Storage", "2", 2, 0, &[2], &[1]);
        p.str("f64").tensor("DoubleStorage", "3", 2, 0, &[2], &[1]);
        p.str("i64").tensor("LongStorage", "4", 2, 1, &[1], &[1]);
        p.str("i32").tensor("IntStorage", "5", 3, 0, &[3], &[1]);
        p.str("u8").tensor("ByteStorage", "6", 2, 0, &[2], &[1]);
        p.str("bool").tensor("BoolStorage", "7", 2, 0, &[2], &[1]);
    });
    let path = dir.join("views.pth");
    write_zip(
        &path,
        &[
            ("views/data.pkl", &pkl),
            ("views/byteorder", b"little"),
            ("views/data/0", &f32_bytes(&s)),
            ("views/data/1", &half),
            ("views/data/2", &bf),
            ("views/data/3", &f64s),
            ("views/data/4", &i64s),
            ("views/data/5", &i32s),
            ("views/data/6", &[0, 255]),
            ("views/data/7", &[0, 1]),
            ("views/version", b"3\n"),
        ],
    );
    assert_eq!(sniff(&path).unwrap(), Format::TorchSave);
    let ck = read_checkpoint_with_meta(&path).unwrap();
    assert_eq!(ck.epoch, Some(3));
    assert_eq!(ck.val_loss, None);
    let sd = ck.state_dict;
    let t = |k: &str| sd.get(k).unwrap_or_else(|| panic!("{k}"));
    assert_eq!(sd.keys().next(), Some("rows"));
    assert_eq!(t("rows").data, [2.5, 3.5, 4.5, 5.5, 6.5, 7.5]);
    assert_eq!(t("cols").shape, [3, 2]);
    assert_eq!(t("cols").data, [2.5, 5.5, 3.5, 6.5, 4.5, 7.5]);
    assert_eq!(t("bcast").data, [1.5, 2.5, 3.5, 1.5, 2.5, 3.5]);
    assert_eq!(
        (t("scalar").shape.len(), t("scalar").data.as_slice()),
        (0, &[9.5][..])
    );
    assert!(t("empty").data.is_empty() && t("empty").shape == [0, 4]);
    assert_eq!(t("half").data, [1.5, -2.0, 65504.0]);
    assert_eq!(
        t("bf16").data,
        [1.5, half::bf16::from_f32(-3.0e38).to_f32()]
    );
    assert_eq!(t("f64").data, [0.1f64 as f32, -7.0]);
    assert_eq!(t("i64").ints.as_deref(), Some(&[-5i64][..]));
    assert_eq!(t("i32").ints.as_deref(), Some(&[-1i64, 7, 9][..]));
    assert_eq!(t("i32").data, [-1.0, 7.0, 9.0]);
    assert_eq!(t("u8").ints.as_deref(), Some(&[0i64, 255][..]));
    assert_eq!(
        (t("bool").dtype, t("bool").ints.as_deref()),
        (DType::Bool, Some(&[0i64, 1][..]))
    );
    assert_eq!(t("half").ints, None);

    // The same tensors as a bare state dict (no wrapper dict).
    let mut p = Pk::new();
    p.op(b"}(")
        .str("module.w")
        .tensor("FloatStorage", "0", 10, 4, &[2, 2], &[1, 2])
        .op(b"u.");
    let bare = dir.join("bare.pt");
    write_zip(
        &bare,
        &[
            ("archive/data.pkl", &p.0),
            ("archive/data/0", &f32_bytes(&s)),
        ],
    );
    let ck = read_checkpoint_with_meta(&bare).unwrap();
    assert_eq!(ck.epoch, None);
    assert_eq!(ck.state_dict.keys().collect::<Vec<_>>(), ["w"]);
    assert_eq!(ck.state_dict.tensors[0].1.data, [4.5, 6.5, 5.5, 7.5]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn gather_walks_any_strides() {
    let src: Vec<u8> = (0..100i64).flat_map(|i| i.to_le_bytes()).collect();
    let spec = |offset, shape: &[usize], strides: &[usize]| TensorSpec {
        storage: "0".into(),
        dtype: DType::I64,
        storage_numel: 100,
        offset,
        shape: shape.to_vec(),
        strides: strides.to_vec(),
    };
    let ints = |sp: &TensorSpec| materialise_view(&src, sp).ints.unwrap();
    // [2, 3, 2] with strides (30, 1, 10) from offset 5, against a naive triple loop.
    let sp = spec(5, &[2, 3, 2], &[30, 1, 10]);
    let mut want = Vec::new();
    for a in 0..2 {
        for b in 0..3 {
            for c in 0..2 {
                want.push(5 + 30 * a + b + 10 * c);
            }
        }
    }
    assert_eq!(ints(&sp), want);
    assert_eq!(sp.extent(), Some(5 + 30 + 2 + 10 + 1));
    assert_eq!(ints(&spec(7, &[2, 1, 3], &[0, 0, 1])), [7, 8, 9, 7, 8, 9]);
    assert_eq!(ints(&spec(3, &[4], &[0])), [3, 3, 3, 3]);
    assert_eq!(ints(&spec(42, &[], &[])), [42]);
    assert_eq!(ints(&spec(90, &[3, 2], &[2, 1])), [90, 91, 92, 93, 94, 95]);
    assert!(spec(0, &[1, 4], &[99, 1]).is_contiguous());
    assert!(!spec(0, &[2, 2], &[1, 2]).is_contiguous());
}

#[test]
fn torchscript_and_hf_clip_agree_bit_for_bit() {
    let dir = clip_formats();
    let ts = dir.join("ViT-tiny.pt");
    let hf = dir.join("hf/model.safetensors");
    assert_eq!(sniff(&ts).unwrap(), Format::TorchScript);
    assert_eq!(sniff(&hf).unwrap(), Format::Safetensors);

    let openai = read_torchscript(&ts).unwrap();
    let shape = |k: &str| openai.get(k).unwrap_or_else(|| panic!("{k}")).shape.clone();
    assert_eq!(shape("token_embedding.weight"), [1000, 64]);
    assert_eq!(shape("positional_embedding"), [77, 64]);
    assert_eq!(shape("text_projection"), [64, 48]);
    assert_eq!(shape("logit_scale"), Vec::<usize>::new());
    assert_eq!(
        shape("transformer.resblocks.1.attn.in_proj_weight"),
        [192, 64]
    );
    assert_eq!(shape("transformer.resblocks.1.mlp.c_fc.weight"), [256, 64]);
    assert_eq!(shape("visual.conv1.weight").len(), 4);
    assert!(openai.keys().all(|k| !k.contains("training")));

    let from_ts = clip_text_from_openai(&openai);
    let from_hf = clip_text_from_openai(&read_hf_clip(&hf).unwrap());
    assert_eq!(from_ts.len(), 6 + 2 * 12);
    assert!(
        from_ts
            .keys()
            .all(|k| k.starts_with("clip.") && !k.starts_with("clip.visual"))
    );
    let ts_keys: Vec<_> = from_ts.keys().collect();
    let hf_keys: Vec<_> = from_hf.keys().collect();
    assert_eq!(ts_keys, hf_keys);
    for ((key, a), (_, b)) in from_ts.tensors.iter().zip(&from_hf.tensors) {
        assert_eq!(a.shape, b.shape, "{key}");
        assert_eq!(a.dtype, b.dtype, "{key}");
        let bits = |t: &RawTensor| t.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(a) == bits(b), "{key} differs");
        assert!(a.data.iter().any(|&x| x != 0.0), "{key} is all zeros");
    }
}

#[test]
fn wrong_reader_says_which_to_use() {
    let ts = clip_formats().join("ViT-tiny.pt");
    let err = read_checkpoint(&ts).unwrap_err().to_string();
    assert!(
        err.contains("read_torchscript") && err.contains("ViT-tiny.pt"),
        "{err}"
    );
    let err = read_torchscript(&parity("mosmed")).unwrap_err().to_string();
    assert!(err.contains("read_checkpoint"), "{err}");
}

#[test]
fn corrupt_inputs_are_clear_errors() {
    let dir = temp_dir("corrupt");
    let named = |e: TorchError, file: &str| {
        let msg = e.to_string();
        assert!(msg.contains(file), "{msg}");
        e
    };

    let missing = dir.join("missing.pth.tar");
    assert!(matches!(
        named(read_checkpoint(&missing).unwrap_err(), "missing.pth.tar"),
        TorchError::Io { .. }
    ));

    let empty = dir.join("empty.pth.tar");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        named(read_checkpoint(&empty).unwrap_err(), "empty.pth.tar"),
        TorchError::Empty { .. }
    ));
    assert!(matches!(sniff(&empty), Err(TorchError::Empty { .. })));

    let whole = std::fs::read(parity("mosmed")).unwrap();
    let truncated = dir.join("truncated.pth.tar");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    assert!(matches!(
        named(
            read_checkpoint(&truncated).unwrap_err(),
            "truncated.pth.tar"
        ),
        TorchError::NotZip { .. }
    ));

    // Deterministic noise (an LCG), not starting with a zip or safetensors header.
    let mut x = 0x2545f4914f6cdd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    let random = dir.join("random.bin");
    std::fs::write(&random, &noise).unwrap();
    assert!(matches!(
        named(read_checkpoint(&random).unwrap_err(), "random.bin"),
        TorchError::NotZip { .. }
    ));
    assert!(matches!(
        sniff(&random),
        Err(TorchError::Unrecognised { .. })
    ));
    assert!(matches!(
        named(read_hf_clip(&random).unwrap_err(), "random.bin"),
        TorchError::Safetensors { .. }
    ));

    let legacy = dir.join("legacy.pth");
    std::fs::write(
        &legacy,
        [
            0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
        ],
    )
    .unwrap();
    assert!(matches!(
        named(read_checkpoint(&legacy).unwrap_err(), "legacy.pth"),
        TorchError::Legacy { .. }
    ));

    // A flipped byte inside a storage: the entry's CRC no longer matches.
    let mut flipped = whole.clone();
    let start = {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&whole)).unwrap();
        let f = z.by_name("best_model-RecLMIS.pth/data/0").unwrap();
        f.data_start().unwrap() as usize
    };
    flipped[start + 3] ^= 0x40;
    let crc = dir.join("crc.pth.tar");
    std::fs::write(&crc, &flipped).unwrap();
    match named(read_checkpoint(&crc).unwrap_err(), "crc.pth.tar") {
        e @ TorchError::Entry { .. } => assert!(e.to_string().contains("data/0"), "{e}"),
        e => panic!("{e}"),
    }

    let no_pkl = dir.join("no_pkl.pth.tar");
    write_zip(&no_pkl, &[("ck/version", b"3\n"), ("ck/data/0", &[0; 8])]);
    assert!(matches!(
        named(read_checkpoint(&no_pkl).unwrap_err(), "no_pkl.pth.tar"),
        TorchError::NoDataPkl { .. }
    ));

    let s = f32_bytes(&[1.0; 6]);
    let short_view = dir.join("short_view.pth.tar");
    let pkl = checkpoint_pickle(|p| {
        p.str("ok").tensor("FloatStorage", "0", 6, 0, &[6], &[1]);
        p.str("down1.w")
            .tensor("FloatStorage", "0", 6, 2, &[3, 2], &[2, 1]);
    });
    write_zip(&short_view, &[("ck/data.pkl", &pkl), ("ck/data/0", &s)]);
    match named(
        read_checkpoint(&short_view).unwrap_err(),
        "short_view.pth.tar",
    ) {
        e @ TorchError::TruncatedStorage {
            need: 8, have: 6, ..
        } => assert!(e.to_string().contains("down1.w")),
        e => panic!("{e}"),
    }

    let short_entry = dir.join("short_entry.pth.tar");
    let pkl = checkpoint_pickle(|p| {
        p.str("up1.w").tensor("FloatStorage", "0", 6, 0, &[6], &[1]);
    });
    write_zip(
        &short_entry,
        &[("ck/data.pkl", &pkl), ("ck/data/0", &s[..20])],
    );
    match named(
        read_checkpoint(&short_entry).unwrap_err(),
        "short_entry.pth.tar",
    ) {
        e @ TorchError::TruncatedStorage {
            need: 6, have: 5, ..
        } => assert!(e.to_string().contains("up1.w")),
        e => panic!("{e}"),
    }

    let no_storage = dir.join("no_storage.pth.tar");
    write_zip(&no_storage, &[("ck/data.pkl", &pkl)]);
    assert!(matches!(
        named(
            read_checkpoint(&no_storage).unwrap_err(),
            "no_storage.pth.tar"
        ),
        TorchError::MissingStorage { .. }
    ));

    let bad_op = dir.join("bad_op.pth.tar");
    write_zip(&bad_op, &[("ck/data.pkl", b"\x80\x02}(\xfe")]);
    match named(read_checkpoint(&bad_op).unwrap_err(), "bad_op.pth.tar") {
        TorchError::Pickle {
            source:
                pickle::PickleError::UnknownOpcode {
                    opcode: 0xfe,
                    at: 4,
                },
            ..
        } => {}
        e => panic!("{e}"),
    }

    let evil = dir.join("evil.pth.tar");
    let mut p = Pk::new();
    p.op(b"}(").str("state_dict").op(b"}(").str("outc.weight");
    p.global("os", "system")
        .str("echo pwned")
        .op(b"\x85R")
        .op(b"uu.");
    write_zip(&evil, &[("ck/data.pkl", &p.0)]);
    match named(read_checkpoint(&evil).unwrap_err(), "evil.pth.tar") {
        e @ TorchError::UnsupportedGlobal { .. } => {
            let msg = e.to_string();
            assert!(
                msg.contains("os.system") && msg.contains("outc.weight"),
                "{msg}"
            );
        }
        e => panic!("{e}"),
    }

    let complex = dir.join("complex.pth.tar");
    let pkl = checkpoint_pickle(|p| {
        p.str("w")
            .tensor("ComplexFloatStorage", "0", 1, 0, &[1], &[1]);
    });
    write_zip(&complex, &[("ck/data.pkl", &pkl), ("ck/data/0", &[0; 8])]);
    assert!(matches!(
        named(read_checkpoint(&complex).unwrap_err(), "complex.pth.tar"),
        TorchError::UnsupportedGlobal { .. }
    ));

    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sizes_claiming_a_trillion_elements_are_refused_before_allocating() {
    let dir = temp_dir("huge");
    let t0 = std::time::Instant::now();
    // A storage claiming 10^12 floats with 8 bytes in the file.
    let huge_storage = dir.join("huge_storage.pth.tar");
    let mut p = Pk::new();
    p.op(b"}(").str("state_dict").op(b"}(").str("down1.w");
    p.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
    p.str("storage")
        .global("torch", "FloatStorage")
        .str("0")
        .str("cpu")
        .long(1_000_000_000_000);
    p.op(b"tQ")
        .int(0)
        .ints(&[1_000_000, 1_000_000])
        .ints(&[1_000_000, 1]);
    p.op(b"\x89")
        .global("collections", "OrderedDict")
        .op(b")Rt")
        .op(b"R");
    p.op(b"uu.");
    write_zip(
        &huge_storage,
        &[
            ("ck/data.pkl", &p.0),
            ("ck/data/0", &f32_bytes(&[1.0, 2.0])),
        ],
    );
    match read_checkpoint(&huge_storage).unwrap_err() {
        e @ TorchError::TruncatedStorage {
            need: 1_000_000_000_000,
            have: 2,
            ..
        } => assert!(e.to_string().contains("huge_storage.pth.tar"), "{e}"),
        e => panic!("{e}"),
    }
    // One float repeated (stride 0) to 10^6 × 10^6: 4 TB if copied out.
    let repeated = dir.join("repeated.pth.tar");
    let pkl = checkpoint_pickle(|p| {
        p.str("down1.w")
            .tensor("FloatStorage", "0", 1, 0, &[1_000_000, 1_000_000], &[0, 0]);
    });
    write_zip(
        &repeated,
        &[("ck/data.pkl", &pkl), ("ck/data/0", &f32_bytes(&[1.0]))],
    );
    match read_checkpoint(&repeated).unwrap_err() {
        e @ TorchError::BadTensor { .. } => {
            let msg = e.to_string();
            assert!(msg.contains("repeated.pth.tar"), "{msg}");
            assert!(
                msg.contains("claims 1000000000000 elements over a storage of 1"),
                "{msg}"
            );
        }
        e => panic!("{e}"),
    }
    // A repeated view within the bound is still copied out.
    let broadcast = dir.join("broadcast.pth.tar");
    let pkl = checkpoint_pickle(|p| {
        p.str("down1.w")
            .tensor("FloatStorage", "0", 1, 0, &[2, 3], &[0, 0]);
    });
    write_zip(
        &broadcast,
        &[("ck/data.pkl", &pkl), ("ck/data/0", &f32_bytes(&[7.5]))],
    );
    let sd = read_checkpoint(&broadcast).unwrap();
    let t = sd.get("down1.w").unwrap();
    assert_eq!(t.shape, [2, 3]);
    assert_eq!(t.data, [7.5; 6]);
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    std::fs::remove_dir_all(dir).unwrap();
}
