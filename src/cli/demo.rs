//! `mindreader demo`: the engine end to end on built-in synthetic data.
//!
//! A simulated "brain" maps a hidden scene code z (16-d) to V voxels through a random linear
//! encoding plus Gaussian noise; each scene also has a 64-d unit "embedding" (another random map
//! of z). A two-layer mapper (linear → GELU → linear → L2-normalise) is trained with Adam on
//! 0.4·MSE + 0.6·(1 − cos) (Mind Reader's mse_cos weights) to predict the embedding from the
//! voxels, and is evaluated by top-1 retrieval among held-out scenes against chance.
//! Later issues replace this with the synthetic world and the real Mind Reader mapper.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mindreader::nn::ParamStore;
use mindreader::ops::{elementwise as ew, l2norm, matmul, reduce};
use mindreader::tensor::randn_vec;
use mindreader::train::{Adam, AdamConfig, Schedule};
use mindreader::{Device, Tape, Tensor};

#[derive(Args)]
pub struct DemoArgs {
    /// auto (GPU when usable), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Simulated voxels per trial.
    #[arg(long, default_value_t = 1024)]
    pub voxels: usize,
    /// Training scenes (a further 300 are held out for retrieval).
    #[arg(long, default_value_t = 2000)]
    pub train: usize,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Noise standard deviation relative to the signal (higher is harder).
    #[arg(long, default_value_t = 1.0)]
    pub noise: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

const LATENT: usize = 16;
const EMBED: usize = 64;
const HIDDEN: usize = 256;
const TEST: usize = 300;
const BATCH: usize = 100;

/// Voxels and unit-norm embeddings for `n` scenes drawn from the same simulated subject.
fn simulate(n: usize, voxels: usize, noise: f32, world_seed: u64, sample_seed: u64) -> (Vec<f32>, Vec<f32>) {
    let encode = randn_vec(LATENT * voxels, 1.0 / (LATENT as f32).sqrt(), world_seed);
    let embed = randn_vec(LATENT * EMBED, 1.0, world_seed + 1);
    let z = randn_vec(n * LATENT, 1.0, sample_seed);
    let eps = randn_vec(n * voxels, noise, sample_seed + 1);
    let mut x = vec![0.0; n * voxels];
    let mut t = vec![0.0; n * EMBED];
    for i in 0..n {
        let zi = &z[i * LATENT..][..LATENT];
        for v in 0..voxels {
            x[i * voxels + v] = (0..LATENT).map(|k| zi[k] * encode[k * voxels + v]).sum::<f32>() + eps[i * voxels + v];
        }
        let row = &mut t[i * EMBED..][..EMBED];
        for (e, r) in row.iter_mut().enumerate() {
            *r = (0..LATENT).map(|k| zi[k] * embed[k * EMBED + e]).sum();
        }
        let norm = row.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|r| *r /= norm);
    }
    (x, t)
}

struct Mapper {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl Mapper {
    fn new(store: &mut ParamStore, voxels: usize, seed: u64, device: &Device) -> Result<Mapper> {
        let mut p = |name: &str, shape: &[usize], std: f32, s: u64| -> Result<Tensor> {
            Ok(store.insert(name, Tensor::randn(shape, std, seed + s, device)?)?)
        };
        Ok(Mapper {
            w1: p("fc1.weight", &[HIDDEN, voxels], (1.0 / voxels as f32).sqrt(), 10)?,
            b1: p("fc1.bias", &[HIDDEN], 0.0, 11)?,
            w2: p("fc2.weight", &[EMBED, HIDDEN], (1.0 / HIDDEN as f32).sqrt(), 12)?,
            b2: p("fc2.bias", &[EMBED], 0.0, 13)?,
        })
    }

    fn forward(&self, tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
        let h = matmul::linear(tape, x, &self.w1, Some(&self.b1))?;
        let h = ew::gelu(tape, &h)?;
        let y = matmul::linear(tape, &h, &self.w2, Some(&self.b2))?;
        Ok(l2norm::l2_normalize(tape, &y, 1e-12)?)
    }
}

/// 0.4·MSE + 0.6·(1 − mean cos) for unit-norm prediction and target.
fn mse_cos(tape: &mut Tape, y: &Tensor, t: &Tensor) -> Result<Tensor> {
    let d = ew::sub(tape, y, t)?;
    let sq = ew::square(tape, &d)?;
    let mse = reduce::mean_all(tape, &sq)?;
    let prod = ew::mul(tape, y, t)?;
    let cos = reduce::sum(tape, &prod, -1)?;
    let mean_cos = reduce::mean_all(tape, &cos)?;
    let neg = ew::scale(tape, &mean_cos, -1.0)?;
    let one_minus = ew::add_scalar(tape, &neg, 1.0)?;
    let a = ew::scale(tape, &mse, 0.4)?;
    let b = ew::scale(tape, &one_minus, 0.6)?;
    Ok(ew::add(tape, &a, &b)?)
}

/// Top-1 retrieval of each scene's embedding among all held-out embeddings, and the mean cosine.
fn retrieval(pred: &[f32], target: &[f32], n: usize) -> (f32, f32) {
    let mut hits = 0;
    let mut cos_sum = 0.0;
    for i in 0..n {
        let p = &pred[i * EMBED..][..EMBED];
        let dot = |j: usize| p.iter().zip(&target[j * EMBED..][..EMBED]).map(|(a, b)| a * b).sum::<f32>();
        let best = (0..n).map(|j| (j, dot(j))).fold((0, f32::MIN), |b, c| if c.1 > b.1 { c } else { b });
        hits += (best.0 == i) as usize;
        cos_sum += dot(i);
    }
    (hits as f32 / n as f32, cos_sum / n as f32)
}

pub fn run(args: DemoArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    anyhow::ensure!(args.train >= BATCH, "--train must be at least {BATCH}");
    anyhow::ensure!(args.voxels > 0 && args.epochs > 0, "--voxels and --epochs must be positive");
    println!("mindreader demo on {device}: {} training + {TEST} held-out simulated scenes, {} voxels, noise {}", args.train, args.voxels, args.noise);
    let (xtr, ttr) = simulate(args.train, args.voxels, args.noise, args.seed, args.seed + 100);
    let (xte, tte) = simulate(TEST, args.voxels, args.noise, args.seed, args.seed + 200);

    let mut store = ParamStore::new();
    let mapper = Mapper::new(&mut store, args.voxels, args.seed, &device)?;
    let mut adam = Adam::new(AdamConfig::adam(1e-3, 1e-5));
    let schedule = Schedule::Step { every: 10, gamma: 0.8 };
    let batches = args.train / BATCH;
    let bar = ProgressBar::new((args.epochs * batches) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  epoch {msg}").context("progress style")?);
    let start = Instant::now();
    let mut last_loss = f32::NAN;
    for epoch in 0..args.epochs {
        let lr = schedule.lr(1e-3, epoch);
        let mut total = 0.0;
        for b in 0..batches {
            let x = Tensor::from_slice(&xtr[b * BATCH * args.voxels..][..BATCH * args.voxels], &[BATCH, args.voxels], &device)?;
            let t = Tensor::from_slice(&ttr[b * BATCH * EMBED..][..BATCH * EMBED], &[BATCH, EMBED], &device)?;
            let mut tape = Tape::new();
            store.watch_all(&mut tape);
            let y = mapper.forward(&mut tape, &x)?;
            let loss = mse_cos(&mut tape, &y, &t)?;
            let grads = tape.backward(&loss)?;
            store.accumulate(&grads)?;
            adam.step(&mut store, lr)?;
            store.zero_grad();
            total += loss.scalar()?;
            bar.inc(1);
        }
        last_loss = total / batches as f32;
        bar.set_message(format!("{}/{} loss {last_loss:.4}", epoch + 1, args.epochs));
    }
    bar.finish();
    let seconds = start.elapsed().as_secs_f32();

    let xt = Tensor::from_slice(&xte, &[TEST, args.voxels], &device)?;
    let pred = mapper.forward(&mut Tape::inference(), &xt)?.to_vec_f32()?;
    let (top1, cos) = retrieval(&pred, &tte, TEST);
    println!("trained {} epochs in {seconds:.1} s on {device}; final training loss {last_loss:.4}", args.epochs);
    println!("held-out {TEST}-way top-1 retrieval: {:.1}% (chance {:.2}%); mean cosine {cos:.3}", 100.0 * top1, 100.0 / TEST as f32);
    Ok(())
}
