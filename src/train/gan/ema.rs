//! The small per-step updates of the GAN loop (training_loop.py 455–471, networks.py 235): the
//! gradients' `nan_to_num`, G_ema's exponential moving average, and the mapping's `w_avg`.

use crate::autograd::Tape;
use crate::error::Result;
use crate::nn::ParamStore;
use crate::ops::elementwise as ew;
use crate::ops::reduce::mean;
use crate::tensor::Tensor;

/// `nan_to_num(nan=0, posinf=1e5, neginf=−1e5)` on every accumulated gradient, in place
/// (StyleGAN2-ADA's `misc.nan_to_num`, which also clamps finite values to ±1e5). On the GPU one
/// kernel per gradient and nothing read back.
pub fn sanitize_gradients(params: &mut ParamStore) -> Result<()> {
    for p in params.iter_mut() {
        if let Some(g) = &p.grad {
            ew::nan_to_num_(g, 1e5)?;
        }
    }
    Ok(())
}

/// The EMA's β for this step: half-life `ema_kimg` (ramped up to `rampup · cur_nimg` when set),
/// `0.5^(batch / ema_nimg)`.
pub fn ema_beta(batch: usize, ema_kimg: f64, rampup: Option<f64>, cur_nimg: u64) -> f64 {
    let mut nimg = ema_kimg * 1000.0;
    if let Some(r) = rampup {
        nimg = nimg.min(cur_nimg as f64 * r);
    }
    0.5f64.powf(batch as f64 / nimg.max(1e-8))
}

/// `p_ema ← p.lerp(p_ema, β)` for the parameters; buffers are copied (they are not averaged).
/// β is a one-element tensor and every write is in place, so a CUDA graph replays the update with
/// each step's β written into the same buffer.
pub fn update_ema(
    ema: &mut ParamStore,
    ema_buffers: &mut ParamStore,
    params: &ParamStore,
    buffers: &ParamStore,
    beta: &Tensor,
) -> Result<()> {
    let mut off = Tape::inference();
    for (e, p) in ema.iter_mut().zip(params.iter()) {
        // p + β(p_ema − p)
        let d = ew::sub(&mut off, &e.value, &p.value)?;
        let d = ew::scale_by(&mut off, &d, beta)?;
        e.value.copy_from(&ew::add(&mut off, &p.value, &d)?)?;
    }
    for (e, b) in ema_buffers.iter_mut().zip(buffers.iter()) {
        e.value.copy_from(&b.value)?;
    }
    Ok(())
}

/// The mapping's tracked average in training mode: `w_avg ← mean(w).lerp(w_avg, 0.995)`.
pub fn track_w_avg(w_avg: &Tensor, w: &Tensor) -> Result<()> {
    const BETA: f32 = 0.995;
    let mut off = Tape::inference();
    let m = mean(&mut off, w, 0)?;
    let d = ew::sub(&mut off, w_avg, &m)?;
    let d = ew::scale(&mut off, &d, BETA)?;
    // In place, so that a CUDA graph's replay updates the buffer the network holds.
    w_avg.copy_from(&ew::add(&mut off, &m, &d)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Device;

    #[test]
    fn the_ema_half_life_and_ramp_up_are_the_references() {
        // 5 kimg at batch 16: β = 0.5^(16/5000).
        let b = ema_beta(16, 5.0, None, 10_000);
        assert!((b - 0.5f64.powf(16.0 / 5000.0)).abs() < 1e-12);
        // Early on the ramp-up shortens the half-life to 5% of the images seen.
        let b = ema_beta(16, 5.0, Some(0.05), 1600);
        assert!((b - 0.5f64.powf(16.0 / 80.0)).abs() < 1e-12);
        // At the first step (no images yet) the average is the weights themselves.
        assert_eq!(ema_beta(16, 5.0, Some(0.05), 0), 0.0);
    }

    #[test]
    fn nan_to_num_matches_torch() {
        let mut store = ParamStore::new();
        let t = store
            .insert("w", Tensor::zeros(&[4], &Device::Cpu).unwrap())
            .unwrap();
        let _ = t;
        for p in store.iter_mut() {
            p.grad = Some(
                Tensor::from_vec(
                    vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.5],
                    &[4],
                    &Device::Cpu,
                )
                .unwrap(),
            );
        }
        sanitize_gradients(&mut store).unwrap();
        let g = store.iter().next().unwrap().grad.as_ref().unwrap();
        assert_eq!(g.to_vec_f32().unwrap(), vec![0.0, 1e5, -1e5, 2.5]);
    }
}
