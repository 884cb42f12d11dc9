use super::phantom::{cos_det, sin_det};
use super::render::Rendered;
use super::*;

use crate::test_support::shared;

fn cfg(size: usize) -> SynthConfig {
    SynthConfig {
        size,
        ..SynthConfig::default()
    }
}

fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Zone of every pixel, from the same geometry the sample was drawn with.
fn zones_of(r: &Rendered, size: usize) -> Vec<Option<Zone>> {
    let unit = |p: usize| (p as f64 + 0.5) / size as f64;
    (0..size * size)
        .map(|i| {
            let (x, y) = r.phantom.to_body(unit(i % size), unit(i / size));
            r.phantom.zone_at(x, y)
        })
        .collect()
}

fn z(side: Side, level: Level) -> Zone {
    Zone::new(side, level)
}

#[test]
fn own_cosine_matches_std_to_1e_10() {
    for i in -5000..5000 {
        let x = f64::from(i) * 0.0137;
        assert!((cos_det(x) - x.cos()).abs() < 1e-10, "cos({x})");
        assert!((sin_det(x) - x.sin()).abs() < 1e-10, "sin({x})");
    }
}

#[test]
fn same_seed_and_index_give_the_same_bytes() {
    let c = cfg(64);
    let a = sample(&c, 5);
    assert_eq!(a, sample(&c, 5));
    assert_ne!(a.image, sample(&c, 6).image);
    let other_seed = SynthConfig { seed: 1, ..c };
    assert_ne!(a.image, sample(&other_seed, 5).image);
}

#[test]
fn output_is_pinned() {
    // Changing the generator changes every published demo number: update only on purpose.
    let s = sample(&cfg(64), 0);
    assert_eq!(
        s.note,
        "Bilateral pulmonary infection, two infected areas, lower left lung and upper right lung."
    );
    let hash = fnv1a(s.image.iter().chain(&s.mask).copied());
    assert_eq!(hash, 0x4778_c8ff_f495_39f9, "{hash:#018x}");
}

#[test]
fn one_scene_at_every_size() {
    // Geometry is drawn in body coordinates, so sizes differ only by sampling.
    let small = sample(&cfg(64), 3);
    let large = sample(&cfg(224), 3);
    assert_eq!(small.note, large.note);
    assert_eq!(small.distractor_zones, large.distractor_zones);
    let frac = |m: &[u8]| m.iter().map(|&v| f64::from(v)).sum::<f64>() / m.len() as f64;
    assert!((frac(&small.mask) - frac(&large.mask)).abs() < 0.004);
}

#[test]
fn lesions_lie_in_named_zones_and_distractors_outside() {
    for size in [64, 96] {
        let c = cfg(size);
        for index in 0..40 {
            let r = render(&c, index);
            let s = &r.sample;
            let zmap = zones_of(&r, size);
            if index < 3 {
                assert_eq!(zone_map(&c, index), zmap, "public zone_map disagrees");
            }
            assert!((1..=4).contains(&s.zones.len()), "#{index}");
            assert!((1..=3).contains(&s.distractor_zones.len()), "#{index}");
            assert!(s.zones.is_sorted() && s.distractor_zones.is_sorted());
            assert!(s.distractor_zones.iter().all(|d| !s.zones.contains(d)));
            assert_eq!(parse_note(&s.note).as_ref(), Some(&s.zones), "{}", s.note);
            assert_eq!(s.image.len(), size * size);
            assert!(s.mask.iter().all(|&m| m <= 1));
            for (i, &m) in s.mask.iter().enumerate() {
                if m == 1 {
                    let zone = zmap[i].expect("mask pixel outside every lung zone");
                    assert!(s.zones.contains(&zone), "#{index}: mask pixel in {zone}");
                }
            }
            let mut lesion_pixels = 0;
            for obj in &r.objects {
                // Each opacity is a visible blob of its own, entirely in its zone.
                assert!(
                    obj.pixels.len() >= 10 * size * size / 4096,
                    "#{index} {obj:?}"
                );
                for &p in &obj.pixels {
                    assert_eq!(zmap[p], Some(obj.zone), "#{index}");
                    assert_eq!(s.mask[p] == 1, obj.lesion, "#{index}");
                }
                assert_eq!(obj.lesion, s.zones.contains(&obj.zone));
                assert_eq!(!obj.lesion, s.distractor_zones.contains(&obj.zone));
                if obj.lesion {
                    lesion_pixels += obj.pixels.len();
                }
            }
            let mask_pixels = s.mask.iter().filter(|&&m| m == 1).count();
            assert_eq!(mask_pixels, lesion_pixels, "#{index}");
        }
    }
}

#[test]
fn patients_left_lung_is_on_the_images_right() {
    let size = 64;
    let c = cfg(size);
    for index in 0..20 {
        let zmap = zone_map(&c, index);
        let (mut left, mut right) = (0, 0);
        for (i, zone) in zmap.iter().enumerate() {
            let on_image_right = i % size >= size / 2;
            match zone.map(|z| z.side) {
                Some(Side::Left) => {
                    assert!(on_image_right);
                    left += 1;
                }
                Some(Side::Right) => {
                    assert!(!on_image_right);
                    right += 1;
                }
                None => {}
            }
        }
        // Both lung fields are large: 10-19 % of the image each.
        for n in [left, right] {
            let frac = f64::from(n) / (size * size) as f64;
            assert!((0.10..0.19).contains(&frac), "#{index}: {frac}");
        }
    }
}

/// How one opacity looks at 64 px.
#[derive(Debug)]
struct Look {
    lesion: bool,
    pixels: f64,
    /// Grey levels the opacity adds to the phantom, averaged over its mask.
    added: f64,
}

fn looks(n: u64) -> Vec<Look> {
    let size = 64;
    let c = cfg(size);
    let unit = |p: usize| (p as f64 + 0.5) / size as f64;
    let mut out = Vec::new();
    for index in 0..n {
        let r = render(&c, index);
        let ph = &r.phantom;
        for obj in &r.objects {
            // The pixel noise averages out over a blob of 40+ pixels.
            let added = obj
                .pixels
                .iter()
                .map(|&p| {
                    let base = ph.value(unit(p % size), unit(p / size)) * ph.gain + ph.offset;
                    f64::from(r.sample.image[p]) - 255.0 * base.clamp(0.0, 1.0)
                })
                .sum::<f64>()
                / obj.pixels.len() as f64;
            out.push(Look {
                lesion: obj.lesion,
                pixels: obj.pixels.len() as f64,
                added,
            });
        }
    }
    out
}

#[test]
fn lesions_are_visible_and_distractors_look_the_same() {
    let all = looks(300);
    let mean = |lesion: bool, f: fn(&Look) -> f64| {
        let v: Vec<f64> = all.iter().filter(|l| l.lesion == lesion).map(f).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (area_l, area_d) = (mean(true, |l| l.pixels), mean(false, |l| l.pixels));
    let (rise_l, rise_d) = (mean(true, |l| l.added), mean(false, |l| l.added));
    eprintln!(
        "lesions {area_l:.1} px, +{rise_l:.1} grey; distractors {area_d:.1} px, +{rise_d:.1} grey"
    );
    assert!(
        (area_l - area_d).abs() / area_l < 0.1,
        "{area_l} vs {area_d}"
    );
    assert!(
        (rise_l - rise_d).abs() / rise_l < 0.05,
        "{rise_l} vs {rise_d}"
    );
    // At 64 px a lesion averages 50+ pixels and brightens the lung by 40+ grey levels.
    assert!(area_l > 50.0, "{area_l}");
    assert!(rise_l > 40.0, "{rise_l}");
    let faint: Vec<&Look> = all.iter().filter(|l| l.added < 25.0).collect();
    assert!(faint.is_empty(), "{faint:?}");
}

#[test]
fn mask_covers_a_few_percent() {
    let c = cfg(64);
    let fracs: Vec<f64> = (0..200)
        .map(|i| {
            let m = sample(&c, i).mask;
            m.iter().map(|&v| f64::from(v)).sum::<f64>() / m.len() as f64
        })
        .collect();
    let mean = fracs.iter().sum::<f64>() / fracs.len() as f64;
    assert!((0.025..0.05).contains(&mean), "{mean}");
    assert!(fracs.iter().all(|&f| f > 0.004), "{fracs:?}");
}

#[test]
fn degenerate_sizes_do_not_panic() {
    let s = sample(&cfg(0), 1);
    assert!(s.image.is_empty() && s.mask.is_empty() && !s.zones.is_empty());
    assert_eq!(sample(&cfg(1), 1).image.len(), 1);
}

#[test]
fn limits_are_respected() {
    let one = SynthConfig {
        max_lesions: 1,
        max_distractors: 0,
        ..cfg(32)
    };
    let many = SynthConfig {
        max_lesions: 9,
        ..cfg(32)
    };
    let mut counts = [0usize; 7];
    for i in 0..60 {
        let s = sample(&one, i);
        assert_eq!((s.zones.len(), s.distractor_zones.len()), (1, 0));
        let s = sample(&many, i);
        counts[s.zones.len()] += 1;
        assert!(s.distractor_zones.len() <= (6 - s.zones.len()).min(3));
    }
    assert!(counts[6] > 0 && counts[0] == 0, "{counts:?}");
}

#[test]
fn notes_in_qata_style() {
    assert_eq!(
        note_for(&[z(Side::Right, Level::Middle), z(Side::Left, Level::Lower)]),
        "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung."
    );
    assert_eq!(
        note_for(&[z(Side::Right, Level::Upper)]),
        "Unilateral pulmonary infection, one infected area, upper right lung."
    );
    assert_eq!(
        note_for(&[
            z(Side::Left, Level::Lower),
            z(Side::Left, Level::Upper),
            z(Side::Left, Level::Middle),
            z(Side::Left, Level::Upper),
        ]),
        "Unilateral pulmonary infection, three infected areas, upper middle lower left lung."
    );
    assert_eq!(note_for(&[]), "No pulmonary infection.");
    assert_eq!(parse_note("No pulmonary infection."), Some(vec![]));
}

#[test]
fn every_cleaned_qata_test_caption_is_reproduced() {
    let path = shared().join("data/qata-cov19/Test_Folder/Test_text_cleaned.csv");
    let mut reader = csv::Reader::from_path(&path).expect("shared QaTa captions");
    let mut rows = 0;
    for record in reader.records() {
        let record = record.expect("csv row");
        let caption = &record[1];
        let zones = parse_note(caption).unwrap_or_else(|| panic!("{caption}"));
        assert_eq!(note_for(&zones).to_lowercase(), caption.to_lowercase());
        rows += 1;
    }
    assert_eq!(rows, 600);
}

#[test]
fn lvit_notes_parse_except_typos() {
    use calamine::{Reader, open_workbook_auto};
    let path = shared().join("data/qata-cov19/Test_Folder/Test_text.xlsx");
    let mut book = open_workbook_auto(&path).expect("shared LViT notes");
    let range = book
        .worksheet_range_at(0)
        .expect("a sheet")
        .expect("readable");
    let notes: Vec<String> = range.rows().skip(1).map(|r| r[1].to_string()).collect();
    let failed: Vec<&String> = notes.iter().filter(|n| parse_note(n).is_none()).collect();
    assert_eq!(notes.len(), 600);
    // 7 misspellings ("midlle", "uppper", "leff", ...) and 2 notes without a side.
    assert_eq!(failed.len(), 9, "{failed:?}");
    assert_eq!(
        parse_note(
            "Bilateral pulmonary infection, two infected areas, all left lung and right lung."
        ),
        Some(Zone::ALL.to_vec())
    );
}

#[test]
fn parse_note_rejects_what_is_not_a_zone_list() {
    for bad in [
        "",
        "lung",
        "Unilateral pulmonary infection, one infected area, upper leff lung.",
        "Bilateral pulmonary infection, two infected areas, lower left lobe.",
        "Unilateral pulmonary infection, one infected area, upper centre lung.",
    ] {
        assert_eq!(parse_note(bad), None, "{bad}");
    }
}

/// The tokens CLIP's BPE makes of these notes: one per word or punctuation mark, except
/// "unilateral" (two; the golden file below confirms the model).
fn note_tokens(note: &str) -> Vec<String> {
    note.to_lowercase()
        .replace("unilateral", "uni lateral")
        .replace(',', " ,")
        .replace('.', " .")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn zone_words_survive_the_18_token_context() {
    // Check the one-token-per-word model against the reference tokenizer output.
    let path = shared().join("reference/tokenizer-golden.jsonl");
    let text = std::fs::read_to_string(&path).expect("tokenizer golden file");
    let mut checked = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let note = v["note"].as_str().expect("note");
        let Some(zones) = parse_note(note) else {
            continue;
        };
        if note_for(&zones).to_lowercase() != note {
            continue;
        }
        let ids = v["ids77_unpadded"].as_array().expect("ids");
        let n = ids.iter().filter(|id| id.as_u64() != Some(0)).count();
        assert_eq!(n, note_tokens(note).len() + 2, "{note}");
        checked += 1;
    }
    assert!(checked >= 50, "{checked}");
    // Truncation keeps SOT + 16 tokens + EOT: the last side word must be among those 16.
    for bits in 1u32..64 {
        let zones: Vec<Zone> = (0..6)
            .filter(|b| bits >> b & 1 == 1)
            .map(|b| Zone::ALL[b])
            .collect();
        if zones.len() > 4 {
            continue;
        }
        let tokens = note_tokens(&note_for(&zones));
        let last_side = tokens
            .iter()
            .rposition(|t| t == "left" || t == "right")
            .expect("side");
        assert!(last_side < 16, "{tokens:?}");
    }
}

#[test]
fn flipping_swaps_left_and_right_only() {
    let note =
        "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung.";
    let flipped = flip_note_lr(note);
    assert_eq!(
        flipped,
        "Bilateral pulmonary infection, two infected areas, lower right lung and middle left lung."
    );
    assert_eq!(flip_note_lr(&flipped), note);
    assert_eq!(
        flip_note_lr("Left LEFT left, Right; leftover bright-left"),
        "Right RIGHT right, Left; leftover bright-right"
    );
    let c = cfg(32);
    for i in 0..30 {
        let s = sample(&c, i);
        let mut mirrored: Vec<Zone> = s
            .zones
            .iter()
            .map(|zn| {
                let side = match zn.side {
                    Side::Left => Side::Right,
                    Side::Right => Side::Left,
                };
                z(side, zn.level)
            })
            .collect();
        mirrored.sort();
        assert_eq!(parse_note(&flip_note_lr(&s.note)), Some(mirrored));
    }
}

#[test]
fn config_defaults_fill_missing_fields() {
    let c: SynthConfig = serde_json::from_str(r#"{"size": 64}"#).expect("json");
    assert_eq!(
        c,
        SynthConfig {
            size: 64,
            ..SynthConfig::default()
        }
    );
    assert_eq!((c.seed, c.max_lesions, c.max_distractors), (0, 4, 3));
    let back: SynthConfig =
        serde_json::from_str(&serde_json::to_string(&c).expect("ser")).expect("de");
    assert_eq!(back, c);
    assert_eq!(SynthConfig::default().size, 96);
    assert!(cfg(16).validate().is_err());
    assert!(
        SynthConfig {
            max_lesions: 0,
            ..cfg(64)
        }
        .validate()
        .is_err()
    );
}

#[test]
fn write_lvit_layout_is_readable_and_atomic() {
    use calamine::{Reader, open_workbook_auto};
    let root = std::env::temp_dir().join(format!("reclmis-synth-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("temp dir");
    let out = root.join("data");
    let c = cfg(64);

    // Bad settings: an error and nothing on disk.
    let err = write_lvit(&out, 1, 1, 1, &cfg(8)).expect_err("size 8");
    assert!(matches!(err, SynthError::Config(_)), "{err}");
    assert!(!out.exists());

    write_lvit(&out, 3, 2, 2, &c).expect("write");
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("data")]);

    let splits = [
        ("Train_Folder", 0..3u64),
        ("Val_Folder", 3..5),
        ("Test_Folder", 5..7),
    ];
    for (folder, range) in splits.clone() {
        assert_eq!(
            std::fs::read_dir(out.join(folder).join("img"))
                .expect("img")
                .count(),
            range.clone().count()
        );
        for index in range {
            let s = sample(&c, index);
            let img =
                image::open(out.join(format!("{folder}/img/synth_{index:06}.png"))).expect("image");
            assert_eq!((img.width(), img.height()), (64, 64));
            assert_eq!(img.to_luma8().into_raw(), s.image);
            let mask =
                image::open(out.join(format!("{folder}/labelcol/mask_synth_{index:06}.png")))
                    .expect("mask")
                    .to_luma8()
                    .into_raw();
            assert_eq!(mask, s.mask.iter().map(|&m| m * 255).collect::<Vec<_>>());
        }
    }
    let read = |file: &str| -> Vec<Vec<String>> {
        let mut book = open_workbook_auto(out.join(file)).expect("xlsx");
        let range = book
            .worksheet_range_at(0)
            .expect("sheet")
            .expect("readable");
        range
            .rows()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect()
    };
    let train_val = read("Train_Folder/Train_Val_text.xlsx");
    assert_eq!(train_val[0], ["Image", "Description"]);
    assert_eq!(train_val.len(), 6);
    let test = read("Test_Folder/Test_text.xlsx");
    assert_eq!(test.len(), 3);
    for (row, index) in train_val[1..].iter().chain(&test[1..]).zip(0u64..) {
        assert_eq!(row[0], format!("mask_synth_{index:06}.png"));
        assert_eq!(row[1], sample(&c, index).note);
    }

    // A second run into the same folder is refused and leaves it as it was.
    let before = std::fs::read(out.join("Test_Folder/Test_text.xlsx")).expect("read");
    let err = write_lvit(
        &out,
        1,
        1,
        1,
        &SynthConfig {
            seed: 9,
            ..c.clone()
        },
    )
    .expect_err("exists");
    assert!(matches!(err, SynthError::OutputExists(_)), "{err}");
    assert!(
        err.to_string().ends_with(&format!("({})", out.display())),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join("Test_Folder/Test_text.xlsx")).expect("read"),
        before
    );

    // An empty folder is fine to fill.
    let empty = root.join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    write_lvit(&empty, 1, 0, 1, &c).expect("write into empty folder");
    assert!(empty.join("Test_Folder/img/synth_000001.png").exists());
    std::fs::remove_dir_all(&root).expect("cleanup");
}
