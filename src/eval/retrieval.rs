//! N-way top-1 retrieval between brain-predicted embeddings and the true ones, as MindEye and
//! Mind Reader report it: draw `batches` random sets of `way` held-out stimuli; within each set,
//! "image from brain" is right when a prediction is closest (cosine) to its own stimulus'
//! embedding among the set, "brain from image" when an embedding is closest to its own
//! prediction. Chance is 1/way.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Retrieval {
    /// Candidates per query (300, or every test stimulus when there are fewer).
    pub way: usize,
    pub batches: usize,
    /// Fraction of predictions whose own target is the most similar of the `way` targets.
    pub image_from_brain: f64,
    /// Fraction of targets whose own prediction is the most similar of the `way` predictions.
    pub brain_from_image: f64,
    /// Mean cosine similarity between each prediction and its own target.
    pub mean_cosine: f64,
    pub chance: f64,
}

/// Each length-`d` row divided by its L2 norm (at least 1e-8).
pub fn unit_rows(x: &[f32], d: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    for row in y.chunks_exact_mut(d) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-8);
        row.iter_mut().for_each(|v| *v /= n);
    }
    y
}

/// Retrieval over `n` rows of `pred` and `target` (both `[n, d]`).
pub fn retrieval(
    pred: &[f32],
    target: &[f32],
    d: usize,
    way: usize,
    batches: usize,
    seed: u64,
) -> Result<Retrieval> {
    if d == 0 || pred.len() != target.len() || pred.len() % d != 0 {
        return Err(Error::shape(
            "retrieval",
            format!(
                "predictions ({} values) and targets ({} values) must both be [n, {d}]",
                pred.len(),
                target.len()
            ),
        ));
    }
    let n = pred.len() / d;
    if n < 2 {
        return Err(Error::Invalid(format!(
            "retrieval needs at least 2 stimuli, got {n}"
        )));
    }
    let way = way.min(n);
    let (p, t) = (unit_rows(pred, d), unit_rows(target, d));
    let cos = |i: usize, j: usize| -> f32 {
        p[i * d..][..d]
            .iter()
            .zip(&t[j * d..][..d])
            .map(|(a, b)| a * b)
            .sum()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut all: Vec<usize> = (0..n).collect();
    let (mut fwd, mut bwd, mut total) = (0usize, 0usize, 0usize);
    for _ in 0..batches.max(1) {
        all.shuffle(&mut rng);
        let set = &all[..way];
        let sim: Vec<f32> = set
            .iter()
            .flat_map(|&i| set.iter().map(move |&j| (i, j)))
            .map(|(i, j)| cos(i, j))
            .collect();
        for a in 0..way {
            let row_best = (0..way)
                .max_by(|&x, &y| sim[a * way + x].total_cmp(&sim[a * way + y]))
                .unwrap_or(0);
            let col_best = (0..way)
                .max_by(|&x, &y| sim[x * way + a].total_cmp(&sim[y * way + a]))
                .unwrap_or(0);
            fwd += (row_best == a) as usize;
            bwd += (col_best == a) as usize;
        }
        total += way;
    }
    let mean_cosine = (0..n).map(|i| cos(i, i) as f64).sum::<f64>() / n as f64;
    Ok(Retrieval {
        way,
        batches: batches.max(1),
        image_from_brain: fwd as f64 / total as f64,
        brain_from_image: bwd as f64 / total as f64,
        mean_cosine,
        chance: 1.0 / way as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_vec;

    #[test]
    fn perfect_predictions_retrieve_everything_and_noise_is_near_chance() {
        let (n, d) = (400, 32);
        let t = random_vec(n * d, 1);
        let r = retrieval(&t, &t, d, 300, 30, 7).unwrap();
        assert_eq!(
            (r.way, r.image_from_brain, r.brain_from_image),
            (300, 1.0, 1.0)
        );
        assert!((r.mean_cosine - 1.0).abs() < 1e-5);
        let noise = random_vec(n * d, 2);
        let r = retrieval(&noise, &t, d, 300, 30, 7).unwrap();
        assert!(
            r.image_from_brain < 0.02 && r.brain_from_image < 0.02,
            "{r:?}"
        );
    }

    #[test]
    fn small_test_sets_use_every_stimulus() {
        let t = random_vec(50 * 4, 3);
        assert_eq!(retrieval(&t, &t, 4, 300, 30, 1).unwrap().way, 50);
        assert!(retrieval(&t, &t[..8], 4, 300, 30, 1).is_err());
    }
}
