//! Adam and AdamW, fused over every parameter in one kernel launch on the GPU.
//!
//! The maths is torch.optim.Adam / AdamW exactly (see `cpu::update`); Adam's weight decay is L2
//! added to the gradient (what Mind Reader uses, wd 1e-5), AdamW's is decoupled. One launch
//! updates all tensors (`kernels/adam.cu`: a table of pointers, binary search per element):
//! 28 B of traffic per parameter element and no per-tensor launch overhead.

use std::collections::{BTreeMap, HashMap};

use super::super::ops::Real;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::tensor::{launch, launch_1d, upload, Device, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW (decoupled decay) instead of Adam's L2-in-the-gradient.
    pub decoupled: bool,
}

impl AdamConfig {
    /// torch.optim.Adam defaults with this rate and L2 weight decay.
    pub fn adam(lr: f32, weight_decay: f32) -> AdamConfig {
        AdamConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            decoupled: false,
        }
    }

    /// torch.optim.AdamW defaults with this rate and decoupled weight decay.
    pub fn adamw(lr: f32, weight_decay: f32) -> AdamConfig {
        AdamConfig {
            decoupled: true,
            ..AdamConfig::adam(lr, weight_decay)
        }
    }

    pub fn betas(self, beta1: f32, beta2: f32) -> AdamConfig {
        AdamConfig {
            beta1,
            beta2,
            ..self
        }
    }
}

pub mod cpu {
    use super::{AdamConfig, Real};

    /// One Adam step at time `t` (1-based) with rate `lr`, in place.
    pub fn update<T: Real>(
        p: &mut [T],
        g: &[T],
        m: &mut [T],
        v: &mut [T],
        cfg: &AdamConfig,
        lr: f64,
        t: u64,
    ) {
        let c = T::c;
        let (b1, b2) = (c(cfg.beta1 as f64), c(cfg.beta2 as f64));
        let bc1 = T::one() - b1.powi(t as i32);
        let bc2_sqrt = (T::one() - b2.powi(t as i32)).sqrt();
        let (lr, wd, eps) = (c(lr), c(cfg.weight_decay as f64), c(cfg.eps as f64));
        for j in 0..p.len() {
            let mut pj = p[j];
            let mut gj = g[j];
            if cfg.decoupled {
                pj = pj * (T::one() - lr * wd);
            } else {
                gj = gj + wd * pj;
            }
            m[j] = b1 * m[j] + (T::one() - b1) * gj;
            v[j] = b2 * v[j] + (T::one() - b2) * gj * gj;
            p[j] = pj - (lr / bc1) * m[j] / (v[j].sqrt() / bc2_sqrt + eps);
        }
    }
}

pub struct Adam {
    pub config: AdamConfig,
    /// Steps taken so far (the bias corrections use t = step after increment).
    pub step: u64,
    moments: HashMap<String, (Tensor, Tensor)>,
    /// The GPU update's pointer table and tensor offsets as last uploaded, with their device
    /// copies: a step whose buffers sit where the last step's did (the device pool hands a
    /// training step the same addresses each time) launches without uploading anything.
    table: Option<PointerTable>,
    /// How many times that table was uploaded (tests read it).
    uploads: u64,
}

enum Update<'a> {
    /// Step `t` at rate `lr`, both launch arguments.
    Now { lr: f32, t: u64 },
    /// Rate and bias corrections read from the device (a graph replays the launch).
    Staged(&'a mut StagedAdam),
}

/// The device buffers a CUDA graph's Adam update reads: its pointer table (written once, after
/// the capture that fixed the addresses) and each step's (lr, 1 − β1ᵗ, sqrt(1 − β2ᵗ)), written
/// by `stage` before each replay.
pub struct StagedAdam {
    gpu: std::sync::Arc<crate::tensor::Gpu>,
    pointers: Vec<u64>,
    offsets: Vec<u64>,
    pending: bool,
    pointers_dev: cudarc::driver::CudaSlice<u64>,
    offsets_dev: cudarc::driver::CudaSlice<u64>,
    step_dev: cudarc::driver::CudaSlice<f32>,
}

impl StagedAdam {
    /// Buffers for an update of `n_tensors` parameter tensors. Allocate them before the capture.
    pub fn new(gpu: &std::sync::Arc<crate::tensor::Gpu>, n_tensors: usize) -> Result<StagedAdam> {
        Ok(StagedAdam {
            gpu: gpu.clone(),
            pointers: vec![0; 4 * n_tensors],
            offsets: vec![0; n_tensors + 1],
            pending: true,
            pointers_dev: gpu.zeros(4 * n_tensors)?,
            offsets_dev: gpu.zeros(n_tensors + 1)?,
            step_dev: gpu.zeros(3)?,
        })
    }

    /// Copies the table the capture recorded to the device (once, before the first replay).
    pub fn flush(&mut self) -> Result<()> {
        if self.pending {
            let s = &self.gpu.stream;
            s.memcpy_htod(&self.pointers, &mut self.pointers_dev)
                .and_then(|_| s.memcpy_htod(&self.offsets, &mut self.offsets_dev))
                .map_err(|e| Error::cuda("copying adam's pointer table", e))?;
            self.pending = false;
        }
        Ok(())
    }

    /// Counts the next step in `adam` and writes its rate and bias corrections for the replay.
    pub fn stage(&mut self, adam: &mut Adam, lr: f32) -> Result<()> {
        adam.step += 1;
        let (bc1, bc2_sqrt) = adam.bias_corrections(adam.step);
        self.gpu
            .stream
            .memcpy_htod(&[lr, bc1, bc2_sqrt], &mut self.step_dev)
            .map_err(|e| Error::cuda("staging adam's step", e))
    }
}

/// What `adam_multi_f32` reads: 4 pointers per tensor (p, g, m, v) and the running offsets.
struct PointerTable {
    pointers: Vec<u64>,
    offsets: Vec<u64>,
    pointers_dev: cudarc::driver::CudaSlice<u64>,
    offsets_dev: cudarc::driver::CudaSlice<u64>,
}

impl Adam {
    pub fn new(config: AdamConfig) -> Adam {
        Adam {
            config,
            step: 0,
            moments: HashMap::new(),
            table: None,
            uploads: 0,
        }
    }

    /// Updates every parameter that has an accumulated gradient, at rate `lr` (from a schedule).
    pub fn step(&mut self, params: &mut ParamStore, lr: f32) -> Result<()> {
        self.step += 1;
        self.update(params, Update::Now { lr, t: self.step })
    }

    /// Queues the update of a step whose rate and bias corrections are read from `staged`'s
    /// device buffer, for a CUDA graph that replays it: call it while capturing, then
    /// `StagedAdam::stage` before every replay. The moments must exist already (an ordinary
    /// step creates them), so the graph allocates nothing that outlives it.
    pub fn record_staged(
        &mut self,
        params: &mut ParamStore,
        staged: &mut StagedAdam,
    ) -> Result<()> {
        self.update(params, Update::Staged(staged))
    }

    /// Creates the (zero) moments of every parameter that has none yet: what the first step would
    /// do, done before a CUDA graph capture so that the graph allocates nothing that outlives it.
    pub fn ensure_moments(&mut self, params: &ParamStore) -> Result<()> {
        for p in params.iter() {
            if !self.moments.contains_key(&p.name) {
                let zeros = || Tensor::zeros(p.value.shape(), p.value.device());
                self.moments.insert(p.name.clone(), (zeros()?, zeros()?));
            }
        }
        Ok(())
    }

    /// (1 − β1ᵗ, sqrt(1 − β2ᵗ)), as the update divides by them.
    fn bias_corrections(&self, t: u64) -> (f32, f32) {
        let c = &self.config;
        (
            1.0 - c.beta1.powi(t as i32),
            (1.0 - c.beta2.powi(t as i32)).sqrt(),
        )
    }

    fn update(&mut self, params: &mut ParamStore, mode: Update<'_>) -> Result<()> {
        let with_grad: Vec<_> = params.iter().filter(|p| p.grad.is_some()).collect();
        let Some(first) = with_grad.first() else {
            return Ok(());
        };
        let device = first.value.device().clone();
        for p in &with_grad {
            if !self.moments.contains_key(&p.name) {
                if matches!(mode, Update::Staged(_)) {
                    return Err(Error::Invalid(format!(
                        "adam: {} has no moments yet; take an ordinary step before recording a staged one",
                        p.name
                    )));
                }
                let zeros = || Tensor::zeros(p.value.shape(), &device);
                self.moments.insert(p.name.clone(), (zeros()?, zeros()?));
            }
        }
        match &device {
            Device::Cpu => {
                let Update::Now { lr, t } = mode else {
                    return Err(Error::Invalid(
                        "adam: a staged update is for CUDA graphs, not the CPU".into(),
                    ));
                };
                for p in &with_grad {
                    let (m, v) = &self.moments[&p.name];
                    let g = p
                        .grad
                        .as_ref()
                        .map(|g| g.storage())
                        .ok_or_else(|| Error::Invalid("gradient vanished".into()))?;
                    let (mut ps, mut ms, mut vs) =
                        (p.value.storage_mut(), m.storage_mut(), v.storage_mut());
                    cpu::update(
                        ps.cpu_f32_mut("adam")?,
                        g.cpu_f32("adam")?,
                        ms.cpu_f32_mut("adam")?,
                        vs.cpu_f32_mut("adam")?,
                        &self.config,
                        lr as f64,
                        t,
                    );
                }
            }
            Device::Cuda(gpu) => {
                use cudarc::driver::{DevicePtr, DevicePtrMut};
                // Hold every buffer locked while the table of raw pointers is in use.
                let mut guards = Vec::with_capacity(with_grad.len());
                for p in &with_grad {
                    let (m, v) = &self.moments[&p.name];
                    let g = p
                        .grad
                        .as_ref()
                        .ok_or_else(|| Error::Invalid("gradient vanished".into()))?;
                    if !p.value.device().same(&device) || !g.device().same(&device) {
                        return Err(Error::DeviceMismatch {
                            op: "adam",
                            a: device.to_string(),
                            b: p.value.device().to_string(),
                        });
                    }
                    guards.push((
                        p.value.storage_mut(),
                        g.storage(),
                        m.storage_mut(),
                        v.storage_mut(),
                        p.value.numel(),
                    ));
                }
                let n_tensors = guards.len() as u32;
                let mut table: Vec<u64> = Vec::with_capacity(4 * guards.len());
                let mut offsets: Vec<u64> = vec![0];
                let mut syncs = Vec::new();
                for (ps, gs, ms, vs, n) in guards.iter_mut() {
                    let (pp, s1) = ps.cuda_f32_mut("adam")?.device_ptr_mut(&gpu.stream);
                    let (gp, s2) = gs.cuda_f32("adam")?.device_ptr(&gpu.stream);
                    table.extend([pp, gp]);
                    syncs.push(s1);
                    syncs.push(s2);
                    let (mp, s3) = ms.cuda_f32_mut("adam")?.device_ptr_mut(&gpu.stream);
                    table.push(mp);
                    syncs.push(s3);
                    let (vp, s4) = vs.cuda_f32_mut("adam")?.device_ptr_mut(&gpu.stream);
                    table.push(vp);
                    syncs.push(s4);
                    offsets.push(offsets[offsets.len() - 1] + *n as u64);
                }
                let total = offsets[offsets.len() - 1];
                let c = self.config;
                let decoupled = c.decoupled as i32;
                match mode {
                    Update::Now { lr, t } => {
                        let cached = self
                            .table
                            .as_ref()
                            .is_some_and(|c| c.pointers == table && c.offsets == offsets);
                        if !cached {
                            self.table = Some(PointerTable {
                                pointers_dev: upload(gpu, &table)?,
                                offsets_dev: upload(gpu, &offsets)?,
                                pointers: table,
                                offsets,
                            });
                        }
                        let uploaded = self.table.as_ref().ok_or_else(|| {
                            Error::Invalid("adam's pointer table vanished".into())
                        })?;
                        let (table_dev, offsets_dev) =
                            (&uploaded.pointers_dev, &uploaded.offsets_dev);
                        self.uploads += !cached as u64;
                        let (bc1, bc2_sqrt) = self.bias_corrections(t);
                        // SAFETY: the table holds 4 live f32 buffers per tensor whose sizes are
                        // the differences of `offsets`; the guards keep them alive and unaliased.
                        launch!(
                            gpu,
                            "adam",
                            "adam_multi_f32",
                            launch_1d(total as usize),
                            table_dev,
                            offsets_dev,
                            &n_tensors,
                            &total,
                            &lr,
                            &c.beta1,
                            &c.beta2,
                            &c.eps,
                            &c.weight_decay,
                            &decoupled,
                            &bc1,
                            &bc2_sqrt
                        )?;
                    }
                    Update::Staged(staged) => {
                        if staged.pointers.len() != table.len() {
                            return Err(Error::Invalid(format!(
                                "adam: the staged table holds {} tensors, this step updates {}",
                                staged.pointers.len() / 4,
                                n_tensors
                            )));
                        }
                        // The device copy is written after the capture (`StagedAdam::flush`):
                        // a capture may not copy from the host.
                        staged.pending |= staged.pointers != table || staged.offsets != offsets;
                        staged.pointers = table;
                        staged.offsets = offsets;
                        // SAFETY: as above; the table the graph reads is `staged.pointers`,
                        // copied to the device before its first replay, and the buffers it
                        // names live as long as the graph (the caller's contract).
                        launch!(
                            gpu,
                            "adam",
                            "adam_multi_f32_staged",
                            launch_1d(total as usize),
                            &staged.pointers_dev,
                            &staged.offsets_dev,
                            &n_tensors,
                            &total,
                            &staged.step_dev,
                            &c.beta1,
                            &c.beta2,
                            &c.eps,
                            &c.weight_decay,
                            &decoupled
                        )?;
                    }
                }
                drop(syncs);
            }
        }
        Ok(())
    }

    /// How many GPU steps had to upload the pointer table (the others found it in place).
    pub fn table_uploads(&self) -> u64 {
        self.uploads
    }

    /// The moments as named tensors (`adam.m.<param>`, `adam.v.<param>`) and the step count as
    /// metadata, for checkpoints that resume exactly.
    pub fn state(&self) -> (Vec<(String, Tensor)>, BTreeMap<String, String>) {
        let mut tensors = Vec::new();
        for (name, (m, v)) in &self.moments {
            tensors.push((format!("adam.m.{name}"), m.clone()));
            tensors.push((format!("adam.v.{name}"), v.clone()));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        (
            tensors,
            BTreeMap::from([("adam.step".to_string(), self.step.to_string())]),
        )
    }

    /// Restores what `state` wrote (tensors go to `device`).
    pub fn load_state(
        &mut self,
        tensors: &[(String, Tensor)],
        metadata: &BTreeMap<String, String>,
        device: &Device,
    ) -> Result<()> {
        self.step = metadata
            .get("adam.step")
            .ok_or_else(|| Error::Invalid("checkpoint has no adam.step metadata".into()))?
            .parse()
            .map_err(|e| Error::Invalid(format!("adam.step is not a number: {e}")))?;
        self.moments.clear();
        for (name, t) in tensors {
            if let Some(p) = name.strip_prefix("adam.m.") {
                let v = tensors
                    .iter()
                    .find(|(n, _)| n == &format!("adam.v.{p}"))
                    .ok_or_else(|| {
                        Error::Invalid(format!("checkpoint has adam.m.{p} but no adam.v.{p}"))
                    })?;
                self.moments.insert(
                    p.to_string(),
                    (t.to_device(device)?, v.1.to_device(device)?),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gpu, parity_sizes, random_vec};
    use crate::Tape;

    /// A hand-computed first Adam step: m = 0.1 g, v = 0.001 g², so the step is lr·sign(g).
    #[test]
    fn first_step_moves_by_lr_times_sign() {
        let mut p = vec![1.0f64, -2.0, 3.0];
        let g = vec![0.5, -0.25, 0.0];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        cpu::update(
            &mut p,
            &g,
            &mut m,
            &mut v,
            &AdamConfig::adam(0.1, 0.0),
            0.1,
            1,
        );
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 1.9).abs() < 1e-6 && (p[2] - 3.0).abs() < 1e-12,
            "{p:?}"
        );
    }

    #[test]
    fn adam_minimises_a_quadratic() {
        let mut store = ParamStore::new();
        let x = store
            .insert(
                "x",
                Tensor::from_vec(vec![3.0, -4.0], &[2], &Device::Cpu).unwrap(),
            )
            .unwrap();
        let mut opt = Adam::new(AdamConfig::adam(0.1, 0.0));
        for _ in 0..300 {
            let mut tape = Tape::new();
            store.watch_all(&mut tape);
            let sq = crate::ops::elementwise::square(&mut tape, &x).unwrap();
            let loss = crate::ops::reduce::sum_all(&mut tape, &sq).unwrap();
            let g = tape.backward(&loss).unwrap();
            store.accumulate(&g).unwrap();
            opt.step(&mut store, 0.1).unwrap();
            store.zero_grad();
        }
        let v = x.to_vec_f32().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
    }

    #[test]
    fn fused_cuda_step_matches_cpu_over_many_tensors() {
        let Some(gpu) = gpu() else { return };
        for cfg in [
            AdamConfig::adam(1e-2, 1e-2),
            AdamConfig::adamw(1e-2, 1e-1).betas(0.0, 0.99),
        ] {
            let run = |d: &Device| {
                let mut store = ParamStore::new();
                for (i, n) in parity_sizes().into_iter().enumerate() {
                    store
                        .insert(
                            &format!("p{i}"),
                            Tensor::from_vec(random_vec(n, i as u64), &[n], d).unwrap(),
                        )
                        .unwrap();
                }
                let mut opt = Adam::new(cfg);
                for step in 0..3 {
                    for (i, p) in store.iter_mut().enumerate() {
                        let n = p.value.numel();
                        p.grad = Some(
                            Tensor::from_vec(random_vec(n, 100 + 10 * step + i as u64), &[n], d)
                                .unwrap(),
                        );
                    }
                    opt.step(&mut store, 1e-2).unwrap();
                }
                store
                    .iter()
                    .flat_map(|p| p.value.to_vec_f32().unwrap())
                    .collect::<Vec<_>>()
            };
            assert_close(
                &run(&gpu),
                &run(&Device::Cpu),
                1e-5,
                1e-6,
                &format!("adam {cfg:?}"),
            );
        }
    }

    /// The pointer table is uploaded once while the buffers stay put, again when a gradient
    /// moves to a new buffer, and the parameters still follow the CPU's steps.
    #[test]
    fn a_step_whose_buffers_have_not_moved_uploads_nothing() {
        let Some(gpu) = gpu() else { return };
        let run = |d: &Device| {
            let mut store = ParamStore::new();
            for (i, n) in [5usize, 300, 1].into_iter().enumerate() {
                store
                    .insert(
                        &format!("p{i}"),
                        Tensor::from_vec(random_vec(n, i as u64), &[n], d).unwrap(),
                    )
                    .unwrap();
            }
            let grad = |p: &crate::nn::Param, seed: u64| {
                let n = p.value.numel();
                Tensor::from_vec(random_vec(n, seed), &[n], d).unwrap()
            };
            store
                .iter_mut()
                .enumerate()
                .for_each(|(i, p)| p.grad = Some(grad(p, 50 + i as u64)));
            let mut opt = Adam::new(AdamConfig::adam(1e-2, 0.0));
            for _ in 0..4 {
                opt.step(&mut store, 1e-2).unwrap();
            }
            let after_four = opt.table_uploads();
            let p = store.iter_mut().nth(1).unwrap();
            p.grad = Some(grad(p, 99));
            opt.step(&mut store, 1e-2).unwrap();
            let values: Vec<f32> = store
                .iter()
                .flat_map(|p| p.value.to_vec_f32().unwrap())
                .collect();
            (values, after_four, opt.table_uploads())
        };
        let (on_gpu, after_four, after_five) = run(&gpu);
        assert_eq!((after_four, after_five), (1, 2));
        assert_close(
            &on_gpu,
            &run(&Device::Cpu).0,
            1e-5,
            1e-6,
            "adam, table cached",
        );
    }

    #[test]
    fn state_round_trips() {
        let mut store = ParamStore::new();
        store
            .insert(
                "w",
                Tensor::from_vec(vec![1.0, 2.0], &[2], &Device::Cpu).unwrap(),
            )
            .unwrap();
        store.iter_mut().for_each(|p| {
            p.grad = Some(Tensor::from_vec(vec![0.1, 0.2], &[2], &Device::Cpu).unwrap())
        });
        let mut a = Adam::new(AdamConfig::adam(1e-3, 0.0));
        a.step(&mut store, 1e-3).unwrap();
        let (tensors, meta) = a.state();
        let mut b = Adam::new(AdamConfig::adam(1e-3, 0.0));
        b.load_state(&tensors, &meta, &Device::Cpu).unwrap();
        assert_eq!(b.step, 1);
        assert_eq!(
            b.moments["w"].0.to_vec_f32().unwrap(),
            a.moments["w"].0.to_vec_f32().unwrap()
        );
    }
}
