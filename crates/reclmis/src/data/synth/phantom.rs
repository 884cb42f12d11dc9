//! The phantom chest: lungs, vessels, heart, in size-free body coordinates, drawn with
//! deterministic maths only.

use std::f64::consts::{FRAC_PI_2, TAU};

use super::{Level, Side, Zone};
use crate::rng::SplitMix64;

/// Cosine from +, ×, rounding only (bit-identical everywhere): Taylor series of cos(x/4) on
/// |x/4| ≤ π/4, then two angle doublings. Absolute error below 1e-10.
pub(super) fn cos_det(x: f64) -> f64 {
    let r = x - (x / TAU).round() * TAU;
    let a2 = (r * 0.25) * (r * 0.25);
    let c = 1.0
        + a2 * (-1.0 / 2.0
            + a2 * (1.0 / 24.0
                + a2 * (-1.0 / 720.0
                    + a2 * (1.0 / 40_320.0 + a2 * (-1.0 / 3_628_800.0 + a2 / 479_001_600.0)))));
    let c2 = 2.0 * c * c - 1.0;
    2.0 * c2 * c2 - 1.0
}

pub(super) fn sin_det(x: f64) -> f64 {
    cos_det(x - FRAC_PI_2)
}

pub(super) fn smoothstep(e0: f64, e1: f64, x: f64) -> f64 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// A smooth compact bump: 1 at 0, 0 beyond |t| = 1.
pub(super) fn bump(t: f64) -> f64 {
    let s = 1.0 - t * t;
    if s > 0.0 { s * s } else { 0.0 }
}

/// Signed distance estimate `f / |∇f|` of an implicit shape (`f > 0` inside). Exact to first
/// order near the boundary, which is where the soft edges and the zone windows need it.
pub(super) fn inner_distance(f: impl Fn(f64, f64) -> f64, x: f64, y: f64) -> f64 {
    const H: f64 = 1e-4;
    let v = f(x, y);
    let gx = (f(x + H, y) - f(x - H, y)) / (2.0 * H);
    let gy = (f(x, y + H) - f(x, y - H)) / (2.0 * H);
    let g = (gx * gx + gy * gy).sqrt();
    if g > 1e-9 { v / g } else { v }
}

// ---------------------------------------------------------------------------------------------
// The phantom
//
// Body coordinates: X across the image (0 on the body's midline, + towards the image's right),
// Y downwards (0 about the lung apices' top margin). Pixel centre (u, v) ∈ [0,1]² maps to
// X = (u − ox) / scale, Y = (v − oy) / scale.

/// Lungs may not cross this distance from the midline (keeps the two fields apart).
pub(super) const MEDIASTINUM: f64 = 0.05;

#[derive(Debug, Clone)]
pub(super) struct Lung {
    pub(super) side: Side,
    /// +1 when the lung is on the image's right (the patient's left).
    pub(super) sign: f64,
    /// Centre distance from the midline, half-width, centre height, half-height, egg factor.
    pub(super) lc: f64,
    pub(super) hw: f64,
    pub(super) vc: f64,
    pub(super) hh: f64,
    pub(super) egg: f64,
    /// Diaphragm: lowest (lateral/medial) height and dome rise at mid-lung.
    pub(super) dome_base: f64,
    pub(super) dome_rise: f64,
    /// Apex, the two band boundaries, lowest point.
    pub(super) bands: [f64; 4],
    /// Hilum position (lateral distance, height).
    pub(super) hilum: (f64, f64),
    pub(super) vessels: Vec<Vessel>,
}

#[derive(Debug, Clone)]
pub(super) struct Vessel {
    /// Start (lateral, height), direction, length, start width.
    pub(super) l0: f64,
    pub(super) y0: f64,
    pub(super) dl: f64,
    pub(super) dy: f64,
    pub(super) len: f64,
    pub(super) width: f64,
}

impl Lung {
    pub(super) fn lateral(&self, x: f64) -> f64 {
        self.sign * x
    }

    /// Egg-shaped outline, narrow round apex and broad square-ish base; > 0 inside.
    pub(super) fn egg_fn(&self, l: f64, y: f64) -> f64 {
        let a = (l - self.lc) / self.hw;
        let b = (y - self.vc) / self.hh;
        let s = 1.0 + self.egg * b;
        if s <= 0.05 {
            return -1.0;
        }
        let q = a / s;
        if b < 0.0 {
            1.0 - (q * q + b * b).sqrt()
        } else {
            1.0 - (q * q * q * q + b * b * b * b).sqrt().sqrt()
        }
    }

    pub(super) fn dome(&self, l: f64) -> f64 {
        let a = ((l - self.lc) / self.hw).clamp(-1.0, 1.0);
        self.dome_base - self.dome_rise * (1.0 - a * a)
    }

    pub(super) fn inside_shape(&self, x: f64, y: f64) -> bool {
        let l = self.lateral(x);
        l > MEDIASTINUM && self.egg_fn(l, y) > 0.0 && y < self.dome(l)
    }

    /// Inner distance to the outline (without the heart), > 0 inside.
    pub(super) fn shape_distance(&self, x: f64, y: f64) -> f64 {
        let l = self.lateral(x);
        let egg = inner_distance(|l, y| self.egg_fn(l, y), l, y);
        let dome = inner_distance(|l, y| self.dome(l) - y, l, y);
        egg.min(dome).min(l - MEDIASTINUM)
    }

    pub(super) fn level_at(&self, y: f64) -> Level {
        if y < self.bands[1] {
            Level::Upper
        } else if y < self.bands[2] {
            Level::Middle
        } else {
            Level::Lower
        }
    }

    pub(super) fn band(&self, level: Level) -> (f64, f64) {
        match level {
            Level::Upper => (self.bands[0], self.bands[1]),
            Level::Middle => (self.bands[1], self.bands[2]),
            Level::Lower => (self.bands[2], self.bands[3]),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Heart {
    pub(super) cx: f64,
    pub(super) cy: f64,
    pub(super) ax: f64,
    pub(super) ay: f64,
    pub(super) cos: f64,
    pub(super) sin: f64,
}

impl Heart {
    /// > 0 outside the heart.
    pub(super) fn outside_fn(&self, x: f64, y: f64) -> f64 {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let p = (dx * self.cos + dy * self.sin) / self.ax;
        let q = (-dx * self.sin + dy * self.cos) / self.ay;
        (p * p + q * q).sqrt() - 1.0
    }
}

#[derive(Debug, Clone)]
pub(super) struct Phantom {
    pub(super) ox: f64,
    pub(super) oy: f64,
    pub(super) scale: f64,
    /// Index 0: the patient's left lung (image right); 1: the patient's right lung.
    pub(super) lungs: [Lung; 2],
    pub(super) heart: Heart,
    pub(super) background: f64,
    pub(super) tissue: f64,
    pub(super) lung_depth: f64,
    pub(super) ribs_posterior: Vec<f64>,
    pub(super) ribs_anterior: Vec<f64>,
    pub(super) rib_amp: f64,
    pub(super) clavicle_y: f64,
    /// Low-frequency exposure variation: (frequency u, frequency v, phase, amplitude).
    pub(super) waves: [(f64, f64, f64, f64); 3],
    pub(super) gain: f64,
    pub(super) offset: f64,
    pub(super) noise: f64,
}

impl Phantom {
    pub(super) fn new(rng: &mut SplitMix64) -> Self {
        let scale = rng.range(0.97, 1.05);
        let ox = 0.5 + rng.range(-0.02, 0.02);
        let oy = 0.5 - 0.5 * scale + rng.range(-0.015, 0.015);
        let heart_angle = rng.range(-0.45, -0.25);
        let heart = Heart {
            cx: rng.range(0.06, 0.09),
            cy: rng.range(0.66, 0.69),
            ax: rng.range(0.16, 0.19),
            ay: rng.range(0.12, 0.14),
            cos: cos_det(heart_angle),
            sin: sin_det(heart_angle),
        };
        let lungs = [
            Self::lung(rng, Side::Left, &heart),
            Self::lung(rng, Side::Right, &heart),
        ];
        let first_rib = rng.range(0.07, 0.10);
        let rib_step = rng.range(0.066, 0.074);
        let ribs_posterior = (0..11)
            .map(|i| first_rib + rib_step * i as f64 + rng.range(-0.004, 0.004))
            .collect();
        let ribs_anterior = (0..6)
            .map(|i| first_rib + 0.1 + 0.085 * i as f64 + rng.range(-0.004, 0.004))
            .collect();
        let mut waves = [(0.0, 0.0, 0.0, 0.0); 3];
        for w in &mut waves {
            let angle = rng.range(0.0, TAU);
            let freq = TAU * rng.range(0.5, 1.5);
            *w = (
                freq * cos_det(angle),
                freq * sin_det(angle),
                rng.range(0.0, TAU),
                rng.range(0.005, 0.018),
            );
        }
        Phantom {
            ox,
            oy,
            scale,
            lungs,
            heart,
            background: rng.range(0.02, 0.06),
            tissue: rng.range(0.46, 0.54),
            lung_depth: rng.range(0.28, 0.34),
            ribs_posterior,
            ribs_anterior,
            rib_amp: rng.range(0.06, 0.09),
            clavicle_y: rng.range(0.13, 0.16),
            waves,
            gain: rng.range(0.92, 1.08),
            offset: rng.range(-0.03, 0.03),
            noise: rng.range(0.012, 0.022),
        }
    }

    pub(super) fn lung(rng: &mut SplitMix64, side: Side, heart: &Heart) -> Lung {
        // The patient's right hemidiaphragm sits a little higher, as in real films.
        let (sign, lift) = match side {
            Side::Left => (1.0, 0.0),
            Side::Right => (-1.0, 0.02),
        };
        let vc = rng.range(0.455, 0.48);
        let hh = rng.range(0.325, 0.345);
        let hilum = (rng.range(0.09, 0.12), rng.range(0.40, 0.45));
        let vessels = (0..7)
            .map(|_| {
                let angle = rng.range(-1.2, 1.3);
                Vessel {
                    l0: hilum.0 + rng.range(-0.01, 0.01),
                    y0: hilum.1 + rng.range(-0.02, 0.02),
                    dl: cos_det(angle),
                    dy: sin_det(angle),
                    len: rng.range(0.10, 0.24),
                    width: rng.range(0.005, 0.009),
                }
            })
            .collect();
        let mut lung = Lung {
            side,
            sign,
            lc: rng.range(0.23, 0.245),
            hw: rng.range(0.152, 0.165),
            vc,
            hh,
            egg: 0.2,
            dome_base: vc + hh * rng.range(0.86, 0.9) - lift,
            dome_rise: rng.range(0.05, 0.08),
            bands: [0.0; 4],
            hilum,
            vessels,
        };
        let inside =
            |l: f64, y: f64| lung.inside_shape(l * sign, y) && heart.outside_fn(l * sign, y) > 0.0;
        // Lowest point of the field (numerically; the outline has no closed form for it).
        let mut bottom = lung.vc;
        for i in 0..=256 {
            let l = lung.lc + lung.hw * (-1.4 + 2.8 * i as f64 / 256.0);
            let mut y = lung.vc + lung.hh;
            while y > bottom {
                if inside(l, y) {
                    bottom = y;
                    break;
                }
                y -= lung.hh / 512.0;
            }
        }
        // One scan step below the last inside point: nothing of the field lies lower.
        let bottom = bottom + lung.hh / 512.0;
        // Thirds of the height from the apex to the top of the diaphragm dome; the lower band
        // also takes the costophrenic recess below the dome's top.
        let top = lung.vc - lung.hh;
        let third = (lung.dome_base - lung.dome_rise - top) / 3.0;
        lung.bands = [top, top + third, top + 2.0 * third, bottom];
        lung
    }

    pub(super) fn lung_of(&self, side: Side) -> &Lung {
        match side {
            Side::Left => &self.lungs[0],
            Side::Right => &self.lungs[1],
        }
    }

    pub(super) fn to_body(&self, u: f64, v: f64) -> (f64, f64) {
        ((u - self.ox) / self.scale, (v - self.oy) / self.scale)
    }

    pub(super) fn to_image(&self, x: f64, y: f64) -> (f64, f64) {
        (self.ox + self.scale * x, self.oy + self.scale * y)
    }

    /// The zone a body point lies in, if any.
    pub(super) fn zone_at(&self, x: f64, y: f64) -> Option<Zone> {
        self.lungs.iter().find_map(|lung| {
            (lung.inside_shape(x, y) && self.heart.outside_fn(x, y) > 0.0 && y < lung.bands[3])
                .then(|| Zone::new(lung.side, lung.level_at(y)))
        })
    }

    /// Inner distance of the lung field (heart shadow cut out), > 0 inside.
    pub(super) fn field_distance(&self, lung: &Lung, x: f64, y: f64) -> f64 {
        let heart = inner_distance(|x, y| self.heart.outside_fn(x, y), x, y);
        lung.shape_distance(x, y).min(heart)
    }

    /// Inner distance of a zone, > 0 exactly where `zone_at` gives this zone.
    pub(super) fn zone_distance(&self, zone: Zone, x: f64, y: f64) -> f64 {
        let lung = self.lung_of(zone.side);
        let (lo, hi) = lung.band(zone.level);
        self.field_distance(lung, x, y).min(y - lo).min(hi - y)
    }

    /// Neck, then rounded shoulders (a quarter circle), then a slowly widening chest.
    pub(super) fn body_half_width(y: f64) -> f64 {
        let t = ((y + 0.06) / 0.2).clamp(0.0, 1.0);
        0.09 + 0.355 * (1.0 - (1.0 - t) * (1.0 - t)).sqrt() + 0.02 * y.clamp(0.0, 1.0)
    }

    /// Noise-free grey value (0..1 before exposure) at image point (u, v).
    pub(super) fn value(&self, u: f64, v: f64) -> f64 {
        let (x, y) = self.to_body(u, v);
        let ax = x.abs();
        let half = Self::body_half_width(y);
        let body = smoothstep(0.0, 0.025, half - ax);
        let heart = 1.0 - smoothstep(-0.08, 0.08, self.heart.outside_fn(x, y));
        // Heart, mediastinum and abdomen are one continuous dense silhouette: take the
        // thickest, so no outline shows where they meet.
        let dense = (0.12 * heart)
            .max(0.12 * bump(x / 0.16))
            .max(0.15 * smoothstep(0.72, 0.98, y));
        let tissue = self.tissue + 0.05 * (ax / half).min(1.0) * (ax / half).min(1.0) + dense;
        let mut g = self.background + (tissue - self.background) * body;
        let mut in_lung: f64 = 0.0;

        for lung in &self.lungs {
            let l = lung.lateral(x);
            // Far from a lung nothing below contributes; skip the distance estimates.
            if l < 0.0 || (l - lung.lc).abs() > 2.0 * lung.hw || y < lung.bands[0] - 0.05 {
                continue;
            }
            let d = self.field_distance(lung, x, y);
            let alpha = smoothstep(-0.004, 0.014, d);
            if alpha <= 0.0 {
                continue;
            }
            let base_fade = 1.0 - 0.3 * smoothstep(lung.vc, lung.bands[3], y);
            let rim = 0.8 + 0.2 * smoothstep(0.0, 0.06, d);
            let mut lung_g = -self.lung_depth * base_fade * rim;
            let (hl, hy) = lung.hilum;
            let r = ((l - hl) * (l - hl) + (y - hy) * (y - hy)).sqrt();
            lung_g += 0.07 * bump(r / 0.07);
            for vs in &lung.vessels {
                // Starting off the hilum's centre keeps the vessels from adding up to a star.
                let t = ((l - vs.l0) * vs.dl + (y - vs.y0) * vs.dy).clamp(0.03, vs.len);
                let px = vs.l0 + t * vs.dl - l;
                let py = vs.y0 + t * vs.dy - y;
                let taper = 1.0 - 0.7 * t / vs.len;
                let dist = (px * px + py * py).sqrt();
                lung_g += 0.035 * taper * bump(dist / (vs.width * taper));
            }
            g += alpha * lung_g;
            in_lung = in_lung.max(alpha);
        }

        let mut bones = 0.0;
        if ax > 0.02 && ax < half {
            let edge_fade = smoothstep(0.02, 0.07, ax) * (1.0 - smoothstep(half - 0.04, half, ax));
            for &y0 in &self.ribs_posterior {
                // Posterior ribs rise slightly from the spine, then curve down laterally.
                let yr = y0 - 0.25 * ax + 1.3 * ax * ax;
                let slope = -0.25 + 2.6 * ax;
                let dist = (y - yr) / (1.0 + slope * slope).sqrt();
                let t = dist / 0.016;
                // Brighter cortex at the rib edges.
                bones += self.rib_amp * (bump(t) + 0.35 * bump((t.abs() - 0.8) / 0.25));
            }
            for &y0 in &self.ribs_anterior {
                // Anterior ribs run down towards the midline; fainter, ending before the spine.
                let yr = y0 + 0.4 * (0.42 - ax);
                let dist = (y - yr) / (1.0f64 + 0.16).sqrt();
                bones += 0.4 * self.rib_amp * bump(dist / 0.012) * smoothstep(0.08, 0.16, ax);
            }
            if ax < 0.36 {
                let yc = self.clavicle_y - 0.14 * ax + 0.25 * ax * ax;
                bones += 0.11 * bump((y - yc) / 0.017) * (1.0 - smoothstep(0.30, 0.36, ax));
            }
            // Ribs show best against air; over soft tissue they fade.
            bones *= edge_fade * (0.4 + 0.6 * in_lung);
        }
        let vertebra = 0.85 + 0.15 * cos_det(TAU * y / 0.07);
        bones += 0.16 * bump(x / 0.045) * vertebra;
        bones -= 0.07 * bump(x / 0.02) * (1.0 - smoothstep(0.22, 0.32, y));
        g += bones * body;

        for &(fu, fv, phase, amp) in &self.waves {
            g += amp * cos_det(fu * u + fv * v + phase);
        }
        g
    }
}
