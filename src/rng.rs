//! The crate's seeded random numbers: xoshiro256++ seeded through SplitMix64. It depends on
//! nothing else in the crate, so every layer may use it: `ops::augment` (per-image augmentation
//! parameters), `data` (synthetic worlds, loader order) and `train` (batch order, views).
//!
//! Why not `rand::StdRng`: its algorithm may change between `rand` releases, and a world must be
//! the same bytes for the same seed forever (tests and published numbers depend on it). Every
//! stimulus, voxel and trial draws from its own stream, `Rng::stream(seed, stage, index)`, so
//! the result does not depend on how rayon schedules the work.

/// One SplitMix64 step: a strong 64-bit mixer, used to derive stream seeds.
fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stage tags for `Rng::stream`: one per independent kind of draw.
pub mod stage {
    pub const SCENE: u64 = 1;
    pub const CAPTIONS: u64 = 2;
    pub const VOXEL: u64 = 3;
    pub const TRIAL_NOISE: u64 = 4;
    pub const SESSION: u64 = 5;
    pub const ORDER: u64 = 6;
    pub const SPLIT: u64 = 7;
    pub const TARGET_PROJECTION: u64 = 8;
    pub const LOADER_ORDER: u64 = 9;
    pub const LOADER_REPEAT: u64 = 10;
    /// Training augmentations (`ops::augment`): one stream per image.
    pub const AUGMENT: u64 = 11;
    /// The seed of each augmented view of a dataset's stimuli (`screen-captions --augment-views`).
    pub const AUGMENT_VIEW: u64 = 12;
    /// Which augmented view a training row uses in an epoch (`train-mapper --augmented`).
    pub const VIEW_CHOICE: u64 = 13;
    /// `train-clip`: the batch order of each epoch and each stimulus' caption per epoch.
    pub const CLIP_TRAIN: u64 = 14;
}

#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        Rng {
            s: [
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
                splitmix(&mut x),
            ],
        }
    }

    /// The independent stream for item `index` of `stage` under `seed`.
    pub fn stream(seed: u64, stage: u64, index: u64) -> Rng {
        let mut x = seed;
        let a = splitmix(&mut x);
        let mut y = a ^ stage.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let b = splitmix(&mut y);
        Rng::new(b ^ index.wrapping_mul(0xAEF1_7502_108E_F2D9))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1) with 24 bits.
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }

    /// Uniform integer in 0..n (n > 0); the tiny modulo bias is irrelevant here.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }

    pub fn chance(&mut self, p: f32) -> bool {
        self.f32() < p
    }

    /// Standard normal (Box–Muller; one of the pair is discarded for simplicity).
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64);
        let u2 = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Fills `out` with standard normals, two per draw (Marsaglia's polar method in f32: no
    /// trigonometry, the hot loop of trial noise).
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        let mut i = 0;
        while i < out.len() {
            let r = self.next_u64();
            let u = (r >> 40) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0;
            let v = ((r >> 16) & 0xFF_FFFF) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0;
            let s = u * u + v * v;
            if s >= 1.0 || s == 0.0 {
                continue;
            }
            let m = (-2.0 * s.ln() / s).sqrt();
            out[i] = u * m;
            if i + 1 < out.len() {
                out[i + 1] = v * m;
            }
            i += 2;
        }
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map(|_| Rng::stream(7, stage::SCENE, 3).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::stream(7, stage::SCENE, 3).next_u64(),
            Rng::stream(7, stage::SCENE, 4).next_u64()
        );
        assert_ne!(
            Rng::stream(7, stage::SCENE, 3).next_u64(),
            Rng::stream(7, stage::VOXEL, 3).next_u64()
        );
        assert_ne!(
            Rng::stream(7, stage::SCENE, 3).next_u64(),
            Rng::stream(8, stage::SCENE, 3).next_u64()
        );
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut v = vec![0f32; 200_001];
        Rng::new(1).fill_normal(&mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "mean {mean} var {var}"
        );
        let mut r = Rng::new(2);
        let w: Vec<f64> = (0..100_000).map(|_| r.normal() as f64).collect();
        let m2 = w.iter().sum::<f64>() / w.len() as f64;
        let v2 = w.iter().map(|x| (x - m2).powi(2)).sum::<f64>() / w.len() as f64;
        assert!(
            m2.abs() < 0.02 && (v2 - 1.0).abs() < 0.03,
            "mean {m2} var {v2}"
        );
    }

    #[test]
    fn uniforms_stay_in_range() {
        let mut r = Rng::new(3);
        for _ in 0..10_000 {
            let x = r.f32();
            assert!((0.0..1.0).contains(&x));
            assert!(r.below(5) < 5);
        }
    }
}
