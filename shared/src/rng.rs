//! Seeded, splittable pseudo-random numbers.
//!
//! Every random draw of a run comes from a [`Rng`] derived from the run's seed
//! and a *stream* tag naming what the numbers are for (initial weights, data
//! order of epoch `e`, projection directions, …). Streams are independent of
//! each other and of the order in which they are created, so a run resumed
//! anywhere draws exactly the same numbers. The generator is xoshiro256++
//! seeded through SplitMix64; its whole state is four `u64`s and can be saved.

use serde::{Deserialize, Serialize};

/// Named purposes of random streams; part of the derivation key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Initial weights.
    Init,
    /// Mini-batch order of one epoch.
    DataOrder(u64),
    /// Trajectory projection directions.
    Projection,
    /// Train/test split and synthetic data (shared by all seeds).
    Data,
    /// Dropout masks of one step.
    Dropout(u64),
    /// Free use in tests and controls.
    Other(u64),
    /// The Gaussian noise of one epoch of a `control:` run.
    Noise(u64),
    /// The phase-randomised surrogates of a run's spectral peak test.
    Surrogates,
    /// Bootstrap resamples of a statistic (the argument tells statistics apart).
    Bootstrap(u64),
}

impl Stream {
    fn key(self) -> (u64, u64) {
        match self {
            Stream::Init => (1, 0),
            Stream::DataOrder(e) => (2, e),
            Stream::Projection => (3, 0),
            Stream::Data => (4, 0),
            Stream::Dropout(s) => (5, s),
            Stream::Other(x) => (6, x),
            Stream::Noise(e) => (7, e),
            Stream::Surrogates => (8, 0),
            Stream::Bootstrap(x) => (9, x),
        }
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ generator with a serialisable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `stream` of the run seeded with `seed`.
    pub fn new(seed: u64, stream: Stream) -> Self {
        let (tag, sub) = stream.key();
        let mut sm = seed ^ 0x6A09_E667_F3BC_C908;
        // Mix all three words through SplitMix64 so nearby seeds diverge.
        let mut mix = splitmix64(&mut sm) ^ tag.wrapping_mul(0xA24B_AED4_963E_E407);
        mix = splitmix64(&mut mix) ^ sub.wrapping_mul(0x9FB2_1C65_1E98_DF25);
        let mut st = mix;
        let s = [splitmix64(&mut st), splitmix64(&mut st), splitmix64(&mut st), splitmix64(&mut st)];
        Rng { s }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Standard normal (Box–Muller; one value per call, deterministic).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7, Stream::Init).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = Rng::new(7, Stream::DataOrder(0));
        let mut y = Rng::new(7, Stream::DataOrder(1));
        assert_ne!(x.next_u64(), y.next_u64());
        let mut z = Rng::new(8, Stream::DataOrder(0));
        assert_ne!(Rng::new(7, Stream::DataOrder(0)).next_u64(), z.next_u64());
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut r = Rng::new(1, Stream::Other(0));
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = Rng::new(3, Stream::Other(1));
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = r.below(5) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
