//! A tiny, self-written SplitMix64 generator.
//!
//! Why not `rand::rngs::StdRng` or `SmallRng`: rand documents both as non-portable ("any future
//! library version may replace the algorithm and results may be platform-dependent"), and its
//! distributions may change between major versions too. A campaign's promise is "the same seed
//! proposes the same experiments", and proposals become paid experiments whose ids are stored in
//! results.jsonl, so the stream must not change when a dependency is upgraded or the controller
//! runs on another architecture. SplitMix64 is ten lines, passes BigCrush, has a single `u64` of
//! state and is trivially keyed, which is all a search strategy needs.

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit counter passed through a bijective mixer.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 output function (a bijection on `u64`), also used to hash keys together.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Folds several words into one well-mixed seed, order-sensitively, so that e.g. (seed, draw 3)
/// and (seed, draw 4) give unrelated streams.
pub fn key(words: &[u64]) -> u64 {
    words.iter().fold(GOLDEN_GAMMA, |acc, &w| {
        mix(acc ^ mix(w.wrapping_add(GOLDEN_GAMMA)))
    })
}

/// FNV-1a of a string, to turn an experiment id into a key word (stable, unlike `DefaultHasher`).
pub fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl SplitMix64 {
    /// A generator whose stream is determined by `seed` alone.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }

    /// Uniform in [0, 1): the top 53 bits as the mantissa, so every value is exact.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (n > 0) by Lemire's multiply-shift; the bias is below 2^-32 for the
    /// sizes used here (at most a few thousand values), which is irrelevant for a search.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64() {
        // First outputs of the reference C implementation (Vigna) for seed 1234567.
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn unit_and_below_stay_in_range() {
        let mut r = SplitMix64::new(7);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(5) < 5);
        }
    }

    #[test]
    fn keys_are_order_sensitive() {
        assert_ne!(key(&[1, 2]), key(&[2, 1]));
        assert_ne!(key(&[0]), key(&[0, 0]));
    }
}
