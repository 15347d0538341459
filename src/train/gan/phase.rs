//! A GAN step's phases (Gmain, Greg, Dmain, Dreg), each split in two: what the host draws for it
//! ([`PhaseDraws`]: the perturbed conditions, style mixing's second latent, CLIP's placement,
//! the layers' noise, path length's y, the real batch) and what the device computes from those
//! arrays ([`run_phase`]: the loss, its backward, `nan_to_num`, Adam). The device half reads
//! nothing from the host, so on a GPU it can be one CUDA graph ([`PhaseGraphs`]), captured once
//! per phase and style-mixing cutoff (the cutoff decides which layers read the second latent),
//! and replayed with each step's draws written into the buffers it reads; G_ema's update is one
//! more graph, its β staged the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::driver::CudaGraph;

use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::models::clip::Clip;
use crate::nn::{NoiseBank, NoiseMode, ParamStore};
use crate::ops::concat::{concat, slice};
use crate::rng::Rng;
use crate::tensor::{Device, Gpu, Tensor};
use crate::train::adam::StagedAdam;
use crate::train::Adam;

use super::ema::{sanitize_gradients, track_w_avg};
use super::loss::{
    d_main, g_main, ClipView, Conditions, Draws, GanLossConfig, Mixing, Nets, Placement, StyleMix,
    Terms,
};
use super::regularize::{path_length, path_length_y, r1};
use super::trainer::GanState;

/// The stream tag of the GAN loop's draws.
pub(super) const GAN_STREAM: u64 = 0x6A4E;

/// The name under which Greg reports the updated running path-length mean (state, not a term).
pub(super) const PL_MEAN: &str = "pl_mean";

/// The phases of a step, in the order they run; the index is the phase's draw stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    GMain = 0,
    GReg = 1,
    DMain = 2,
    DReg = 3,
}

impl Phase {
    /// The network whose loss terms it reports ("G" or "D").
    pub fn net(self) -> &'static str {
        match self {
            Phase::GMain | Phase::GReg => "G",
            Phase::DMain | Phase::DReg => "D",
        }
    }
}

/// What one step's phases are drawn from: its batch on the host and the run's shapes.
pub(super) struct StepSource<'a> {
    pub seed: u64,
    pub step: u64,
    pub loss: &'a GanLossConfig,
    pub real: Vec<f32>,
    pub c1: Vec<f32>,
    pub f1: usize,
    pub c2: Option<(Vec<f32>, usize)>,
    pub resolution: usize,
    pub z_dim: usize,
    pub num_ws: usize,
    pub clip_size: usize,
    pub noise_layers: &'a [(String, usize)],
}

/// One phase's draws, as named host arrays with their shapes; `noise.{layer}` are the layers'
/// noise, `view.{i}` CLIP's placement (`ClipView::host`'s order).
pub struct PhaseDraws {
    pub phase: Phase,
    /// Style mixing's cutoff (`num_ws`: not mixed this time); None when mixing is off.
    pub cutoff: Option<usize>,
    arrays: Vec<(String, Vec<f32>, Vec<usize>)>,
}

impl StepSource<'_> {
    fn batch(&self) -> usize {
        self.c1.len() / self.f1.max(1)
    }

    /// The seed of a phase's layer noise.
    fn noise_seed(&self, phase: Phase) -> u64 {
        self.seed ^ (8 * self.step + phase as u64).wrapping_mul(0x9E37_79B9)
    }

    /// The phase's draws, in the reference's order: the condition perturbation (of the whole
    /// batch; Greg keeps the first `n / pl_batch_shrink` rows), style mixing, then CLIP's
    /// placement (Gmain) or path length's noise (Greg).
    pub fn draw(&self, phase: Phase) -> PhaseDraws {
        let n = self.batch();
        let r = self.resolution;
        let b = match phase {
            Phase::GReg => (n / self.loss.pl_batch_shrink.max(1)).max(1),
            _ => n,
        };
        let mut draws = Rng::stream(self.seed, GAN_STREAM, 8 * self.step + phase as u64);
        let mut arrays = Vec::new();
        let mut push = |name: &str, v: &[f32], shape: Vec<usize>| {
            arrays.push((name.to_string(), v.to_vec(), shape));
        };
        let c2 = self.c2.as_ref().map(|(c, f)| (c.as_slice(), *f));
        let (p1, second) = Conditions::perturb_host(&self.c1, self.f1, c2, &mut draws);
        let f1 = self.f1;
        push("c1", &p1[..b * f1], vec![b, f1]);
        if let (Some((p2, fts)), Some((_, f2))) = (&second, c2) {
            push("c2", &p2[..b * f2], vec![b, f2]);
            push("fts", &fts[..b * (f1 + f2)], vec![b, f1 + f2]);
        }
        let mut cutoff = None;
        if phase != Phase::DReg {
            let mixing = Mixing::draw(
                self.loss.style_mixing,
                b,
                self.z_dim,
                self.num_ws,
                &mut draws,
            );
            if let Some(m) = mixing {
                push("z2", &m.z2, vec![b, self.z_dim]);
                cutoff = Some(m.cutoff);
            }
        }
        match phase {
            Phase::GMain => {
                let place = Placement::draw(r, self.clip_size, &mut draws);
                for (i, (v, shape)) in ClipView::host(place, n, r, self.clip_size)
                    .into_iter()
                    .enumerate()
                {
                    push(&format!("view.{i}"), &v, shape);
                }
            }
            Phase::GReg => {
                let pl_noise = draws.randn(b * 3 * r * r);
                push("y", &path_length_y(&pl_noise, r), vec![b, 3, r, r]);
            }
            Phase::DMain | Phase::DReg => {}
        }
        if phase != Phase::GReg {
            push("real", &self.real, vec![n, 3, r, r]);
        }
        if phase != Phase::DReg {
            let noise = NoiseBank::draw(self.noise_layers, b, self.noise_seed(phase));
            for ((name, v), (_, side)) in noise.iter().zip(self.noise_layers) {
                push(&format!("noise.{name}"), v, vec![b, 1, *side, *side]);
            }
        }
        PhaseDraws {
            phase,
            cutoff,
            arrays,
        }
    }
}

/// A phase's draws on the device.
pub struct PhaseInputs {
    phase: Phase,
    cutoff: Option<usize>,
    tensors: BTreeMap<String, Tensor>,
    noise: NoiseBank,
}

impl PhaseInputs {
    /// Fresh device copies of the draws.
    pub fn upload(draws: &PhaseDraws, device: &Device) -> Result<PhaseInputs> {
        let mut tensors = BTreeMap::new();
        let mut noise = NoiseBank::default();
        for (name, v, shape) in &draws.arrays {
            let t = Tensor::from_slice(v, shape, device)?;
            match name.strip_prefix("noise.") {
                Some(layer) => {
                    noise.0.insert(layer.to_string(), t);
                }
                None => {
                    tensors.insert(name.clone(), t);
                }
            }
        }
        Ok(PhaseInputs {
            phase: draws.phase,
            cutoff: draws.cutoff,
            tensors,
            noise,
        })
    }

    /// Writes another step's draws of the same phase into these buffers (a graph's inputs).
    pub fn write(&self, draws: &PhaseDraws) -> Result<()> {
        if draws.phase != self.phase || draws.cutoff != self.cutoff {
            return Err(Error::Invalid(format!(
                "the inputs of {:?} (cutoff {:?}) were given the draws of {:?} (cutoff {:?})",
                self.phase, self.cutoff, draws.phase, draws.cutoff
            )));
        }
        for (name, v, _) in &draws.arrays {
            let t = match name.strip_prefix("noise.") {
                Some(layer) => self.noise.0.get(layer),
                None => self.tensors.get(name),
            };
            t.ok_or_else(|| Error::Invalid(format!("no input buffer for {name}")))?
                .write_host(v)?;
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("{:?} was drawn without its {name}", self.phase)))
    }

    fn conditions(&self) -> Result<Conditions> {
        let c1 = self.get("c1")?.clone();
        let second = match (self.tensors.get("c2"), self.tensors.get("fts")) {
            (Some(c2), Some(fts)) => Some((c2.clone(), fts.clone())),
            _ => None,
        };
        Ok(Conditions::from_tensors(c1, second))
    }

    fn mix(&self) -> Result<Option<StyleMix>> {
        self.cutoff
            .map(|cutoff| {
                Ok(StyleMix {
                    cutoff,
                    z2: self.get("z2")?.clone(),
                })
            })
            .transpose()
    }

    fn view(&self) -> Result<ClipView> {
        let parts: Vec<Tensor> = self
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with("view."))
            .map(|(_, t)| t.clone())
            .collect();
        ClipView::from_tensors(parts)
    }

    fn noise(&self) -> NoiseMode<'_> {
        NoiseMode::Given(&self.noise)
    }
}

/// How a phase's Adam update gets its rate and bias corrections.
pub enum Update<'a> {
    /// As launch arguments, now.
    Now(f32),
    /// From a CUDA graph's staged buffer.
    Staged(&'a mut StagedAdam),
}

/// `nan_to_num`, Adam, then the gradients dropped: the end of every phase.
fn optimise(params: &mut ParamStore, adam: &mut Adam, update: Update) -> Result<()> {
    sanitize_gradients(params)?;
    let stepped = match update {
        Update::Now(lr) => adam.step(params, lr),
        Update::Staged(staged) => adam.record_staged(params, staged),
    };
    params.zero_grad();
    stepped
}

/// A main phase's backward into the trained network's gradients, then the mapping's `w_avg`
/// (tracked in every pass of G in training mode, as the reference does).
fn backward_into(
    mut tape: Tape,
    loss: &Tensor,
    params: &mut ParamStore,
    w_avg: &Tensor,
    w: &Tensor,
) -> Result<()> {
    let grads = tape.backward(loss)?;
    params.accumulate(&grads)?;
    track_w_avg(w_avg, w)
}

/// The device half of a phase: its loss from `inputs`, the backward into the trained network's
/// gradients, `w_avg` (the G passes), then `nan_to_num` and Adam. Returns the phase's terms.
pub fn run_phase(
    st: &mut GanState,
    clip: &Clip,
    loss: &GanLossConfig,
    gains: (f32, f32),
    inputs: &PhaseInputs,
    update: Update,
) -> Result<Terms> {
    let device = st.pl_mean_dev.device().clone();
    let clip_size = clip.config.vision.image_size;
    let z_dim = st.g.config().z_dim;
    let cond = inputs.conditions()?;
    let n = cond.c1.shape()[0];
    let z = Tensor::zeros(&[n, z_dim], &device)?;
    let mix = inputs.mix()?;
    let nets = Nets {
        g: &st.g.net,
        d: &st.d.net,
        clip: Some(clip),
        clip_size,
    };
    let mut terms = Terms::default();
    match inputs.phase {
        Phase::GMain => {
            let view = inputs.view()?;
            let mut tape = Tape::new();
            st.g.params.watch_all(&mut tape);
            let real = inputs.get("real")?;
            let (l, t, gen) = g_main(
                &mut tape,
                &nets,
                loss,
                &z,
                &cond,
                mix.as_ref(),
                inputs.noise(),
                &view,
                real,
                None,
            )?;
            terms = t;
            backward_into(tape, &l, &mut st.g.params, &nets.g.mapping.w_avg, &gen.w)?;
            optimise(&mut st.g.params, &mut st.adam_g, update)?;
        }
        Phase::GReg => {
            let pl = path_length(
                &st.g.net,
                &mut st.g.params,
                &z,
                &cond.fts,
                mix.as_ref(),
                inputs.noise(),
                inputs.get("y")?,
                &st.pl_mean_dev,
                loss.pl_weight,
                loss.pl_decay,
                gains.0,
            )?;
            track_w_avg(&st.g.net.mapping.w_avg, &pl.w)?;
            st.pl_mean_dev
                .copy_from(&pl.mean.reshaped(st.pl_mean_dev.shape())?)?;
            terms.push("pl_penalty", &pl.penalty)?;
            terms.push("pl_length", &pl.length)?;
            terms.push(PL_MEAN, &pl.mean)?;
            optimise(&mut st.g.params, &mut st.adam_g, update)?;
        }
        Phase::DMain => {
            let mut tape = Tape::new();
            st.d.params.watch_all(&mut tape);
            let real = inputs.get("real")?;
            let (l, t, gen) = d_main(
                &mut tape,
                &nets,
                loss,
                &z,
                &cond,
                mix.as_ref(),
                inputs.noise(),
                real,
            )?;
            terms = t;
            backward_into(tape, &l, &mut st.d.params, &nets.g.mapping.w_avg, &gen.w)?;
            optimise(&mut st.d.params, &mut st.adam_d, update)?;
        }
        Phase::DReg => {
            let real = inputs.get("real")?;
            let out = r1(
                &st.d.net,
                &mut st.d.params,
                real,
                &cond.fts,
                loss.r1_gamma,
                gains.1,
            )?;
            terms.push("r1_penalty", &out.penalty)?;
            optimise(&mut st.d.params, &mut st.adam_d, update)?;
        }
    }
    Ok(terms)
}

/// The most terms one phase reports (its graph's output buffer).
const MAX_TERMS: usize = 32;

/// One phase captured as a CUDA graph, with the buffers it reads and writes.
struct PhaseGraph {
    graph: CudaGraph,
    inputs: PhaseInputs,
    adam: StagedAdam,
    names: Vec<&'static str>,
    /// The phase's terms, written by every replay (`MAX_TERMS`, the first `names.len()` used).
    out: Tensor,
}

/// The captured phases of a run on a GPU, by (phase, style-mixing cutoff).
pub struct PhaseGraphs {
    gpu: Arc<Gpu>,
    graphs: BTreeMap<(Phase, Option<usize>), PhaseGraph>,
    /// G_ema's update (it reads its β from `GanState::ema_beta`).
    ema: Option<CudaGraph>,
}

impl PhaseGraphs {
    pub fn new(gpu: &Arc<Gpu>) -> PhaseGraphs {
        PhaseGraphs {
            gpu: gpu.clone(),
            graphs: BTreeMap::new(),
            ema: None,
        }
    }

    /// Runs a phase by replaying its graph (capturing it first if this phase and cutoff are
    /// new), with `draws` written into its inputs and Adam's step staged. `lr` is the phase's
    /// Adam rate. Call it only after an ordinary step has run (kernels loaded, moments made).
    pub fn run(
        &mut self,
        st: &mut GanState,
        clip: &Clip,
        loss: &GanLossConfig,
        gains: (f32, f32),
        draws: &PhaseDraws,
        lr: f32,
    ) -> Result<Terms> {
        let key = (draws.phase, draws.cutoff);
        if !self.graphs.contains_key(&key) {
            let g = self.capture(st, clip, loss, gains, draws)?;
            self.graphs.insert(key, g);
        }
        let g = self
            .graphs
            .get_mut(&key)
            .ok_or_else(|| Error::Invalid("a captured phase vanished".into()))?;
        g.inputs.write(draws)?;
        let adam = match draws.phase {
            Phase::GMain | Phase::GReg => &mut st.adam_g,
            Phase::DMain | Phase::DReg => &mut st.adam_d,
        };
        g.adam.stage(adam, lr)?;
        g.graph
            .launch()
            .map_err(|e| Error::cuda(format!("replaying the {:?} graph", draws.phase), e))?;
        // Each term as its own copy, read with the step's others.
        let mut off = Tape::inference();
        let mut terms = Terms::default();
        for (i, name) in g.names.iter().enumerate() {
            terms.push(name, &slice(&mut off, &g.out, 0, i, 1)?)?;
        }
        Ok(terms)
    }

    /// G_ema's update as a graph, captured on its first call; β must be staged already.
    pub fn run_ema(&mut self, st: &mut GanState) -> Result<()> {
        if self.ema.is_none() {
            let (graph, ()) = self.gpu.capture(|| st.update_ema())?;
            self.ema = Some(graph);
        }
        match &self.ema {
            Some(g) => g
                .launch()
                .map_err(|e| Error::cuda("replaying the G_ema graph", e)),
            None => Err(Error::Invalid("the G_ema graph vanished".into())),
        }
    }

    fn capture(
        &self,
        st: &mut GanState,
        clip: &Clip,
        loss: &GanLossConfig,
        gains: (f32, f32),
        draws: &PhaseDraws,
    ) -> Result<PhaseGraph> {
        let device = Device::Cuda(self.gpu.clone());
        let inputs = PhaseInputs::upload(draws, &device)?;
        let out = Tensor::zeros(&[MAX_TERMS], &device)?;
        let (params, adam) = match draws.phase {
            Phase::GMain | Phase::GReg => (&st.g.params, &mut st.adam_g),
            Phase::DMain | Phase::DReg => (&st.d.params, &mut st.adam_d),
        };
        adam.ensure_moments(params)?;
        let mut staged = StagedAdam::new(&self.gpu, params.len())?;
        let (graph, names) = self.gpu.capture(|| {
            let terms = run_phase(st, clip, loss, gains, &inputs, Update::Staged(&mut staged))?;
            let names: Vec<&'static str> = terms.0.iter().map(|(n, _)| *n).collect();
            if names.len() > MAX_TERMS {
                return Err(Error::Invalid(format!(
                    "{:?} reports {} terms, more than a graph holds ({MAX_TERMS})",
                    draws.phase,
                    names.len()
                )));
            }
            let mut off = Tape::inference();
            let mut parts: Vec<Tensor> = terms
                .0
                .iter()
                .map(|(_, t)| t.reshaped(&[1]))
                .collect::<Result<_>>()?;
            if names.len() < MAX_TERMS {
                parts.push(Tensor::zeros(&[MAX_TERMS - names.len()], &device)?);
            }
            let refs: Vec<&Tensor> = parts.iter().collect();
            out.copy_from(&concat(&mut off, &refs, 0)?)?;
            Ok(names)
        })?;
        staged.flush()?;
        Ok(PhaseGraph {
            graph,
            inputs,
            adam: staged,
            names,
            out,
        })
    }
}
