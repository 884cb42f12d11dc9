//! Opacities: lesions and distractors share this one generator, so only the note tells them
//! apart.

use std::f64::consts::{PI, TAU};

use super::Zone;
use super::phantom::*;
use crate::rng::SplitMix64;

#[derive(Debug, Clone)]
pub(super) struct Opacity {
    pub(super) zone: Zone,
    pub(super) lesion: bool,
    /// Centre (body coordinates), semi-axes and orientation.
    pub(super) cx: f64,
    pub(super) cy: f64,
    pub(super) rx: f64,
    pub(super) ry: f64,
    pub(super) cos: f64,
    pub(super) sin: f64,
    /// Outline harmonics k = 2, 3, 4: (amplitude, cos φ, sin φ).
    pub(super) harmonics: [(f64, f64, f64); 3],
    /// Lobes in ellipse units: (offset x, offset y, scale); the first is the main body.
    pub(super) lobes: Vec<(f64, f64, f64)>,
    /// Half-width of the soft edge in ellipse units; the mask edge is at radius 0.9.
    pub(super) edge: f64,
    pub(super) contrast: f64,
    /// Mottling: (frequency x, frequency y, phase) in body units, and its depth.
    pub(super) texture: [(f64, f64, f64); 2],
    pub(super) texture_depth: f64,
}

/// Radius (in outline units) where an opacity reaches half its strength: the mask edge.
pub(super) const MASK_RADIUS: f64 = 0.9;

impl Opacity {
    pub(super) fn new(rng: &mut SplitMix64, phantom: &Phantom, zone: Zone, lesion: bool) -> Self {
        let angle = rng.range(0.0, PI);
        let mut harmonics = [(0.0, 0.0, 0.0); 3];
        for (k, h) in harmonics.iter_mut().enumerate() {
            let phase = rng.range(0.0, TAU);
            *h = (
                rng.range(0.0, [0.12, 0.08, 0.05][k]),
                cos_det(phase),
                sin_det(phase),
            );
        }
        let wobble: f64 = harmonics.iter().map(|h| h.0).sum();
        let mut lobes = vec![(0.0, 0.0, 1.0)];
        for _ in 0..[0, 0, 0, 1, 2][rng.below_mulhi(5)] {
            let a = rng.range(0.0, TAU);
            let dist = rng.range(0.45, 0.7);
            lobes.push((dist * cos_det(a), dist * sin_det(a), rng.range(0.5, 0.7)));
        }
        let edge = rng.range(0.2, 0.42);
        // Extent of the mask in outline units, then the physical extent we aim for.
        let reach = lobes
            .iter()
            .map(|&(ox, oy, s)| (ox * ox + oy * oy).sqrt() + s * MASK_RADIUS * (1.0 + wobble))
            .fold(0.0, f64::max);
        let aspect = rng.range(0.75, 1.33).sqrt();
        let mut extent = rng.range(0.07, 0.13);

        // Centre: a point of the zone with room for the whole mask (plus the window ramp).
        let lung = phantom.lung_of(zone.side);
        let (lo, hi) = lung.band(zone.level);
        let mut best = (f64::NEG_INFINITY, 0.0, 0.0);
        for _ in 0..64 {
            let l = lung.lc + lung.hw * rng.range(-1.1, 1.3);
            let y = rng.range(lo, hi);
            let x = lung.sign * l;
            let room = phantom.zone_distance(zone, x, y) - WINDOW;
            if room > best.0 {
                best = (room, x, y);
            }
            if room * ROOM_SLACK >= extent {
                break;
            }
        }
        let (room, cx, cy) = best;
        extent = extent.min(room * ROOM_SLACK).max(0.02);
        let r = extent / (reach * aspect);
        let mut texture = [(0.0, 0.0, 0.0); 2];
        for t in &mut texture {
            let a = rng.range(0.0, TAU);
            let f = TAU / (r * rng.range(0.6, 1.4));
            *t = (f * cos_det(a), f * sin_det(a), rng.range(0.0, TAU));
        }
        Opacity {
            zone,
            lesion,
            cx,
            cy,
            rx: r * aspect,
            ry: r / aspect,
            cos: cos_det(angle),
            sin: sin_det(angle),
            harmonics,
            lobes,
            edge,
            contrast: rng.range(0.16, 0.30),
            texture,
            texture_depth: rng.range(0.05, 0.2),
        }
    }

    /// Normalised radius: < 0.9 inside the mask outline, grows outwards.
    pub(super) fn radius(&self, x: f64, y: f64) -> f64 {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let p = (dx * self.cos + dy * self.sin) / self.rx;
        let q = (-dx * self.sin + dy * self.cos) / self.ry;
        let mut best = f64::INFINITY;
        for &(ox, oy, s) in &self.lobes {
            let a = (p - ox) / s;
            let b = (q - oy) / s;
            let rho = (a * a + b * b).sqrt();
            if rho < 1e-12 {
                return 0.0;
            }
            // cos kθ, sin kθ by repeated complex multiplication: no atan2 needed.
            let (c1, s1) = (a / rho, b / rho);
            let (mut ck, mut sk) = (c1, s1);
            let mut outline = 1.0;
            for &(amp, cp, sp) in &self.harmonics {
                (ck, sk) = (ck * c1 - sk * s1, sk * c1 + ck * s1);
                outline += amp * (ck * cp - sk * sp);
            }
            best = best.min(rho / (s * outline));
        }
        best
    }

    /// Half-extent of the drawn (soft) opacity in body units, for its bounding box.
    pub(super) fn bound(&self) -> f64 {
        let wobble: f64 = 1.0 + self.harmonics.iter().map(|h| h.0).sum::<f64>();
        let reach = self
            .lobes
            .iter()
            .map(|&(ox, oy, s)| (ox * ox + oy * oy).sqrt() + s * (MASK_RADIUS + self.edge) * wobble)
            .fold(0.0, f64::max);
        reach * self.rx.max(self.ry) + 0.01
    }
}

/// How far past its zone's inscribed room an opacity may reach (the window trims the excess).
pub(super) const ROOM_SLACK: f64 = 1.1;

/// Width of the ramp that fades an opacity to zero at its zone's boundary.
pub(super) const WINDOW: f64 = 0.01;
