//! Deterministic test data without dependencies: the xorshift32 generator
//! and the image bytes made from it. Shared by the integration tests (via
//! `support`), the bench and the fuzz checks (`tests/fuzz/checks/*.rs`
//! include this file by `#[path]`), so every fixture has the same bytes
//! everywhere; `src/testkit.rs` produces the same bytes for unit tests.
#![allow(dead_code)]

/// xorshift32 (Marsaglia, shifts 13, 17, 5): deterministic noise.
pub struct XorShift(pub u32);

impl XorShift {
    /// The generator of the image with content seed `seed`: the state is
    /// `seed * 2654435761 | 1` (odd, so never the stuck state 0).
    pub fn seeded(seed: u32) -> XorShift {
        XorShift(seed.wrapping_mul(2_654_435_761) | 1)
    }

    /// The next state.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
}

/// Deterministic image bytes (xorshift32 seeded by `seed`, the top byte of
/// each state), so every test run and every peer sees the same content.
pub fn image_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut rng = XorShift::seeded(seed);
    (0..len).map(|_| (rng.next() >> 24) as u8).collect()
}
