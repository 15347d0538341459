//! Learning-rate schedules, as functions of the epoch (or step) index.

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// `lr · gamma^⌊t / every⌋` (torch StepLR; Mind Reader: ×0.8 every 10 epochs).
    Step { every: usize, gamma: f32 },
    /// Linear warm-up over `warmup` steps, then cosine decay to `min_lr` at `total`.
    Cosine {
        warmup: usize,
        total: usize,
        min_lr: f32,
    },
}

impl Schedule {
    /// Mind Reader's mapper schedule.
    pub fn mind_reader() -> Schedule {
        Schedule::Step {
            every: 10,
            gamma: 0.8,
        }
    }

    pub fn lr(&self, base: f32, t: usize) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((t / every.max(1)) as i32),
            Schedule::Cosine {
                warmup,
                total,
                min_lr,
            } => {
                if t < warmup {
                    base * (t + 1) as f32 / warmup as f32
                } else {
                    let span = total.saturating_sub(warmup).max(1);
                    let progress = ((t - warmup) as f32 / span as f32).min(1.0);
                    min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f32::consts::PI * progress).cos())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_decay_matches_steplr() {
        let s = Schedule::mind_reader();
        assert_eq!(s.lr(2e-4, 0), 2e-4);
        assert_eq!(s.lr(2e-4, 9), 2e-4);
        assert!((s.lr(2e-4, 10) - 1.6e-4).abs() < 1e-10);
        assert!((s.lr(2e-4, 39) - 2e-4 * 0.8f32.powi(3)).abs() < 1e-10);
    }

    #[test]
    fn cosine_warms_up_then_decays_to_min() {
        let s = Schedule::Cosine {
            warmup: 10,
            total: 110,
            min_lr: 1e-5,
        };
        assert!((s.lr(1e-3, 0) - 1e-4).abs() < 1e-9);
        assert!((s.lr(1e-3, 9) - 1e-3).abs() < 1e-9);
        assert!((s.lr(1e-3, 60) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-7);
        assert!((s.lr(1e-3, 200) - 1e-5).abs() < 1e-9);
    }
}
