//! A small counter-based PRNG: every random number is a hash of (seed, device, stream, n).
//!
//! A stateful generator would make device k's numbers depend on how many numbers were drawn
//! before, i.e. on the reading rate and on when the run started. Hashing coordinates instead
//! makes every model value a pure function of (seed, device, time), which is what lets two runs
//! with different device counts, orders or rates agree on device k.

/// splitmix64's finaliser: a bijection on u64 with good avalanche.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from a hash.
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The random coordinates of one device: everything it draws is `key.at(stream, n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u64);

impl Key {
    pub fn new(seed: u64, device: u64) -> Key {
        Key(mix(mix(seed) ^ device.wrapping_mul(0xd6e8_feb8_6659_fd93)))
    }

    /// The hash of coordinate `n` of `stream` (streams are small constants per model part).
    pub fn at(self, stream: u64, n: i64) -> u64 {
        mix(self.0 ^ mix(stream.wrapping_mul(0xa076_1d64_78bd_642f) ^ n as u64))
    }

    pub fn unit(self, stream: u64, n: i64) -> f64 {
        unit(self.at(stream, n))
    }

    pub fn uniform(self, stream: u64, n: i64, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit(stream, n)
    }

    /// Smooth noise in [-1, 1]: random knots every `period` seconds, cosine-interpolated, so
    /// base loads and voltages wander instead of jumping every second.
    pub fn smooth(self, stream: u64, t: f64, period: f64) -> f64 {
        let x = t / period;
        let k = x.floor();
        let f = x - k;
        let a = self.unit(stream, k as i64) * 2.0 - 1.0;
        let b = self.unit(stream, k as i64 + 1) * 2.0 - 1.0;
        let w = (1.0 - (f * std::f64::consts::PI).cos()) * 0.5;
        a + (b - a) * w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_in_range_and_spread() {
        let k = Key::new(42, 7);
        let mut sum = 0.0;
        for n in 0..10_000 {
            let u = k.unit(1, n);
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        assert!((sum / 10_000.0 - 0.5).abs() < 0.02);
    }

    #[test]
    fn keys_differ_by_seed_and_device() {
        assert_ne!(Key::new(1, 0).at(0, 0), Key::new(2, 0).at(0, 0));
        assert_ne!(Key::new(1, 0).at(0, 0), Key::new(1, 1).at(0, 0));
        assert_eq!(Key::new(1, 5).at(3, 9), Key::new(1, 5).at(3, 9));
    }

    #[test]
    fn smooth_is_continuous() {
        let k = Key::new(3, 3);
        let mut last = k.smooth(0, 0.0, 600.0);
        for t in 1..6000 {
            let v = k.smooth(0, t as f64, 600.0);
            assert!((-1.0..=1.0).contains(&v));
            assert!((v - last).abs() < 0.01, "jump at {t}");
            last = v;
        }
    }
}
