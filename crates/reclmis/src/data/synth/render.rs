//! Rendering one sample: the phantom, its opacities, the mask and the note.

use super::lesions::*;
use super::phantom::*;
use super::{SynthConfig, SynthSample, Zone, note_for};
use crate::rng::SplitMix64;

/// Pixels of one opacity above half strength (what the tests check zones against).
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) struct ObjectMask {
    pub(super) zone: Zone,
    pub(super) lesion: bool,
    pub(super) pixels: Vec<usize>,
}

#[cfg_attr(not(test), allow(dead_code))]
pub(super) struct Rendered {
    pub(super) sample: SynthSample,
    pub(super) phantom: Phantom,
    pub(super) objects: Vec<ObjectMask>,
}

/// Random subset of `k` distinct items of `from`, in draw order.
pub(super) fn choose<T: Copy>(rng: &mut SplitMix64, from: &[T], k: usize) -> Vec<T> {
    let mut pool = from.to_vec();
    (0..k.min(pool.len()))
        .map(|_| pool.swap_remove(rng.below_mulhi(pool.len())))
        .collect()
}

pub(super) fn render(cfg: &SynthConfig, index: u64) -> Rendered {
    let size = cfg.size;
    let mut rng = SplitMix64::stream(cfg.seed, index, 1);
    let phantom = Phantom::new(&mut rng);

    let n_lesions = 1 + rng.below_mulhi(cfg.max_lesions.clamp(1, 6));
    let mut zones = choose(&mut rng, &Zone::ALL, n_lesions);
    let free: Vec<Zone> = Zone::ALL
        .into_iter()
        .filter(|z| !zones.contains(z))
        .collect();
    let most = cfg.max_distractors.min(free.len());
    let n_distractors = if most == 0 {
        0
    } else {
        1 + rng.below_mulhi(most)
    };
    let mut distractor_zones = choose(&mut rng, &free, n_distractors);
    let opacities: Vec<Opacity> = zones
        .iter()
        .map(|&z| (z, true))
        .chain(distractor_zones.iter().map(|&z| (z, false)))
        .map(|(z, lesion)| Opacity::new(&mut rng, &phantom, z, lesion))
        .collect();
    zones.sort();
    distractor_zones.sort();

    let mut image = vec![0.0f64; size * size];
    let px_to_unit = |p: usize| (p as f64 + 0.5) / size as f64;
    for (row, line) in image.chunks_mut(size.max(1)).enumerate() {
        let v = px_to_unit(row);
        for (col, g) in line.iter_mut().enumerate() {
            *g = phantom.value(px_to_unit(col), v);
        }
    }

    let mut mask = vec![0u8; size * size];
    let mut objects = Vec::with_capacity(opacities.len());
    // An empty image (size 0) has no pixels to visit.
    for op in opacities.iter().filter(|_| size > 0) {
        let (u, v) = phantom.to_image(op.cx, op.cy);
        let half = op.bound() * phantom.scale * size as f64;
        let span = |c: f64| {
            let c = c * size as f64 - 0.5;
            let lo = (c - half).floor().max(0.0) as usize;
            let hi = ((c + half).ceil().max(0.0) as usize).min(size.saturating_sub(1));
            lo..=hi
        };
        let mut pixels = Vec::new();
        for row in span(v) {
            for col in span(u) {
                let (x, y) = phantom.to_body(px_to_unit(col), px_to_unit(row));
                let rad = op.radius(x, y);
                let profile = 1.0 - smoothstep(MASK_RADIUS - op.edge, MASK_RADIUS + op.edge, rad);
                if profile <= 0.0 {
                    continue;
                }
                let room = phantom.zone_distance(op.zone, x, y);
                if room <= 0.0 {
                    continue;
                }
                let strength = profile * smoothstep(0.0, WINDOW, room);
                let mottle: f64 = op
                    .texture
                    .iter()
                    .map(|&(fx, fy, ph)| cos_det(fx * x + fy * y + ph))
                    .sum::<f64>()
                    * 0.5;
                let i = row * size + col;
                image[i] += op.contrast * strength * (1.0 + op.texture_depth * mottle);
                if strength >= 0.5 {
                    pixels.push(i);
                    if op.lesion {
                        mask[i] = 1;
                    }
                }
            }
        }
        objects.push(ObjectMask {
            zone: op.zone,
            lesion: op.lesion,
            pixels,
        });
    }

    let mut noise_rng = SplitMix64::stream(cfg.seed, index, 2);
    let image = image
        .into_iter()
        .map(|g| {
            let g = g * phantom.gain + phantom.offset + phantom.noise * noise_rng.normal();
            (g.clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect();
    let note = note_for(&zones);
    Rendered {
        sample: SynthSample {
            image,
            mask,
            note,
            zones,
            distractor_zones,
        },
        phantom,
        objects,
    }
}
