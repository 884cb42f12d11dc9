//! The crate's one random number generator: SplitMix64 (Steele, Lea & Flood 2014). It is tiny,
//! fast and fixed forever, so a seed gives the same weights, batches, augmentations and
//! synthetic images on every machine, backend and crate version.
//!
//! Streams are keyed rather than shared: [`mix`] and [`SplitMix64::stream`] derive an
//! independent stream from a seed and a few indices (epoch, step, sample, purpose), so adding a
//! draw in one place never shifts the draws of another.

/// SplitMix64's output function: a bijective 64-bit mix.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for the stream of `(a, b, c)`, e.g. (run seed, epoch, step).
pub fn mix(a: u64, b: u64, c: u64) -> u64 {
    SplitMix64::new(a ^ b.rotate_left(21) ^ c.rotate_left(42)).next_u64()
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The stream of a user-facing seed (weights, training order, augmentation).
    pub fn new(seed: u64) -> Self {
        Self::from_state(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The generator with this exact internal state (state 0 gives the published sequence).
    pub fn from_state(state: u64) -> Self {
        Self { state }
    }

    /// An independent stream per (seed, index, purpose), as the synthetic data draws them:
    /// purposes keep, say, the pixel noise from shifting the geometry draws.
    pub fn stream(seed: u64, index: u64, purpose: u64) -> Self {
        Self::from_state(mix64(
            seed ^ mix64(index ^ mix64(purpose.wrapping_add(GOLDEN_GAMMA))),
        ))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit_f64()
    }

    /// Uniform in `0..n` (n > 0), by scaling a 53-bit uniform.
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit_f64() * n as f64) as usize % n.max(1)
    }

    /// Uniform in `0..n` (n > 0), by the multiply-high method: the synthetic data's draws.
    /// Both ways of drawing an index are kept because changing either would change every
    /// seeded stream that uses it.
    pub fn below_mulhi(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Approximately standard normal (Irwin–Hall of 4 uniforms): no logarithms, so the same
    /// bits everywhere.
    pub fn normal(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.unit_f64()).sum();
        (s - 2.0) * 3f64.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_published_sequence() {
        // First outputs of SplitMix64 from state 0 (Vigna's reference splitmix64.c).
        let mut rng = SplitMix64::from_state(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
    }
}
