//! The GAN stage: R1 and path length's second-order gradients against finite differences of
//! the penalties, a killed and resumed run against an uninterrupted one, and the loss terms
//! against the mind-reader fork's own `accumulate_gradients` (fixtures made by
//! scripts/make_gan_loss_fixtures.py).

use mindreader::models::clip::Clip;
use mindreader::models::lafite::{Discriminator, Generator, Network};
use mindreader::nn::{NoiseMode, ParamStore};
use mindreader::ops::bias_act::pattern;
use mindreader::testing::fixtures_dir;
use mindreader::train::gan::loss::{
    d_main, g_main, ClipView, Conditions, Draws, GanLossConfig, Mixing, Nets, Placement,
};
use mindreader::train::gan::regularize::{path_length, path_length_y, r1};
use mindreader::train::gan::trainer::GanProgress;
use mindreader::train::gan::{train_gan, GanConfig, GanData, GanRunDir};
use mindreader::{Device, Tensor};
use serde_json::json;

fn g_kwargs(res: usize, structure: u32, f: usize, f2: usize) -> serde_json::Value {
    json!({"z_dim": 8, "c_dim": 0, "w_dim": 8, "img_resolution": res, "img_channels": 3,
        "mapping_kwargs": {"num_layers": 2},
        "synthesis_kwargs": {"channel_base": 64, "channel_max": 8, "num_fp16_res": 0,
            "conv_clamp": 256, "architecture": "skip", "structure": structure,
            "f_dim": f, "f_dim2": f2}})
}

fn d_kwargs(res: usize, structure: u32, f: usize, f2: usize) -> serde_json::Value {
    json!({"c_dim": 0, "img_resolution": res, "img_channels": 3, "architecture": "resnet",
        "channel_base": 64, "channel_max": 8, "num_fp16_res": 0, "conv_clamp": 256,
        "use_norm": false, "use_fts": true,
        "epilogue_kwargs": {"structure": structure, "mbstd_group_size": 4, "f_dim": f, "f_dim2": f2}})
}

fn tiny_g() -> Network<Generator> {
    let c = mindreader::models::lafite::GeneratorConfig::from_init_kwargs(&g_kwargs(8, 2, 6, 0))
        .unwrap();
    Network::new(c, Some(3), &Device::Cpu).unwrap()
}

fn tiny_d() -> Network<Discriminator> {
    let c =
        mindreader::models::lafite::DiscriminatorConfig::from_init_kwargs(&d_kwargs(8, 2, 6, 0))
            .unwrap();
    Network::new(c, Some(4), &Device::Cpu).unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, seed, &Device::Cpu).unwrap()
}

/// The `count` entries of largest accumulated gradient, as (parameter index, element, value).
fn largest_gradients(store: &ParamStore, count: usize) -> Vec<(usize, usize, f32)> {
    let mut all = Vec::new();
    for (pi, p) in store.iter().enumerate() {
        if let Some(g) = &p.grad {
            for (e, v) in g.to_vec_f32().unwrap().into_iter().enumerate() {
                all.push((pi, e, v));
            }
        }
    }
    all.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
    all.truncate(count);
    all
}

fn nudge(store: &ParamStore, pi: usize, e: usize, delta: f32) {
    let p = store.iter().nth(pi).unwrap();
    let mut s = p.value.storage_mut();
    s.cpu_f32_mut("test").unwrap()[e] += delta;
}

/// Central differences of `penalty(θ)` (evaluated in f32, differenced in f64) against the
/// gradient the finite-difference Hessian–vector product accumulated.
fn check_against_penalty(
    store: &mut ParamStore,
    mut penalty: impl FnMut(&mut ParamStore) -> f64,
    what: &str,
) {
    store.zero_grad();
    let (_, base) = pattern::record(|| penalty(store));
    let mut penalty = |s: &mut ParamStore| pattern::replay(&base, || penalty(s));
    store.zero_grad();
    penalty(store);
    let picks = largest_gradients(store, 6);
    assert!(picks[0].2 != 0.0, "{what}: no gradient");
    for (pi, e, analytic) in picks {
        let h = 1e-2f32;
        nudge(store, pi, e, h);
        let up = penalty(store);
        nudge(store, pi, e, -2.0 * h);
        let down = penalty(store);
        nudge(store, pi, e, h);
        let numeric = (up - down) / (2.0 * h as f64);
        let name = store.iter().nth(pi).unwrap().name.clone();
        let err = (numeric - analytic as f64).abs();
        assert!(
            err <= 2e-3 * numeric.abs().max(1e-3),
            "{what} {name}[{e}]: accumulated {analytic} vs finite difference {numeric}"
        );
    }
}

#[test]
fn r1_parameter_gradient_matches_finite_differences_of_the_penalty() {
    let mut d = tiny_d();
    let real = randn(&[4, 3, 8, 8], 1);
    let fts = randn(&[4, 6], 2);
    let (gamma, gain) = (0.7f32, 16.0f32);
    let net = std::mem::replace(&mut d.params, ParamStore::new());
    let mut params = net;
    check_against_penalty(
        &mut params,
        |p| {
            let out = r1(&d.net, p, &real, &fts, gamma, gain).unwrap();
            gain as f64 * out.loss.scalar().unwrap() as f64
        },
        "R1",
    );
}

#[test]
fn path_length_gradient_matches_finite_differences_of_the_penalty() {
    let mut g = tiny_g();
    let z = randn(&[2, 8], 5);
    let fts = randn(&[2, 6], 6);
    let pl_noise: Vec<f32> = randn(&[2, 3, 8, 8], 7).to_vec_f32().unwrap();
    let y = Tensor::from_vec(path_length_y(&pl_noise, 8), &[2, 3, 8, 8], &Device::Cpu).unwrap();
    let mixing = Mixing {
        cutoff: 3,
        z2: randn(&[2, 8], 8).to_vec_f32().unwrap(),
    }
    .to_device(&z)
    .unwrap();
    let (weight, decay, gain) = (2.0f32, 0.01f32, 4.0f32);
    let mean = Tensor::full(0.3, &[1], &Device::Cpu).unwrap();
    let mut params = std::mem::replace(&mut g.params, ParamStore::new());
    check_against_penalty(
        &mut params,
        |p| {
            let out = path_length(
                &g.net,
                p,
                &z,
                &fts,
                Some(&mixing),
                NoiseMode::Const,
                &y,
                &mean,
                weight,
                decay,
                gain,
            )
            .unwrap();
            gain as f64 * weight as f64 * out.penalty.scalar().unwrap() as f64
        },
        "path length",
    );
}

/// The paired pixel term (ours, not the fork's): `recon · mean (G(c) − x)²` is added to Gmain's
/// loss, its value is that mean computed here from G's image, and the parameter gradient of the
/// whole Gmain loss with it matches finite differences.
#[test]
fn gmain_recon_term_is_the_weighted_pixel_mse_and_its_gradient_checks() {
    let (mut g, d) = (tiny_g(), tiny_d());
    let real = randn(&[4, 3, 8, 8], 11);
    let c1 = randn(&[4, 6], 12).to_vec_f32().unwrap();
    let z = Tensor::zeros(&[4, 8], &Device::Cpu).unwrap();
    let mut draws = mindreader::rng::Rng::new(3);
    let cond = Conditions::perturbed(&c1, 6, None, &mut draws, &Device::Cpu).unwrap();
    let place = Placement::draw(8, 8, &mut draws);
    let view = ClipView::new(place, 4, 8, 8, &Device::Cpu).unwrap();
    let nets = Nets {
        g: &g.net,
        d: &d.net,
        clip: None,
        clip_size: 8,
    };
    let run = |recon: f32, params: Option<&mut ParamStore>| {
        let cfg = GanLossConfig {
            itd: 0.0,
            itc: 0.0,
            style_mixing: 0.0,
            recon,
            ..GanLossConfig::default()
        };
        let mut tape = mindreader::Tape::new();
        if let Some(p) = params.as_ref() {
            p.watch_all(&mut tape);
        }
        let (loss, terms, gen) = g_main(
            &mut tape,
            &nets,
            &cfg,
            &z,
            &cond,
            None,
            NoiseMode::Const,
            &view,
            &real,
            None,
        )
        .unwrap();
        if let Some(p) = params {
            p.accumulate(&tape.backward(&loss).unwrap()).unwrap();
        }
        (terms, gen.img.to_vec_f32().unwrap())
    };
    let (plain, img) = run(0.0, None);
    assert!(
        plain.get("recon").is_none(),
        "recon = 0 keeps the fork's terms"
    );
    let x = real.to_vec_f32().unwrap();
    let mse = img
        .iter()
        .zip(&x)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        / x.len() as f64;
    let (terms, _) = run(2.5, None);
    near(terms.get("recon").unwrap(), mse, 1e-5, "recon term");
    near(
        terms.get("loss").unwrap(),
        plain.get("loss").unwrap() + 2.5 * mse,
        1e-5,
        "Gmain loss with recon",
    );
    let mut params = std::mem::replace(&mut g.params, ParamStore::new());
    check_against_penalty(
        &mut params,
        |p| run(2.5, Some(p)).0.get("loss").unwrap(),
        "Gmain with recon",
    );
}

fn tiny_run(kimg: f64) -> (GanConfig, GanData, Clip) {
    let clip = Clip::load(&fixtures_dir().join("clip").join("tiny"), &Device::Cpu).unwrap();
    let f = clip.config.projection_dim;
    let m = 12;
    let real: Vec<f32> = randn(&[m, 3, 8, 8], 11)
        .to_vec_f32()
        .unwrap()
        .into_iter()
        .map(f32::tanh)
        .collect();
    let data = GanData {
        real,
        c1: randn(&[m, f], 12).to_vec_f32().unwrap(),
        f1: f,
        c2: Some((randn(&[m, f], 13).to_vec_f32().unwrap(), f)),
        rows: (0..10).collect(),
        preview: vec![10, 11],
    };
    let cfg = GanConfig {
        kimg,
        snapshot_kimg: 0.008,
        seed: 5,
        ..GanConfig::reference(
            g_kwargs(8, 4, f, f),
            d_kwargs(8, 4, f, f),
            8,
            4,
            "tiny".into(),
        )
    };
    (cfg, data, clip)
}

struct KillAt(u64);
impl GanProgress for KillAt {
    fn on_step(&mut self, r: &mindreader::train::gan::StepReport, _: u64) -> bool {
        r.step + 1 != self.0
    }
}

fn weights(s: &ParamStore) -> Vec<f32> {
    s.iter()
        .flat_map(|p| p.value.to_vec_f32().unwrap())
        .collect()
}

fn temp_run(tag: &str) -> GanRunDir {
    let d = std::env::temp_dir().join(format!("mindreader-gan-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    GanRunDir(d)
}

/// 8 steps of batch 4 (R1 and path length both run), snapshots every 2 steps; a run killed
/// after step 5 resumes from the step-4 checkpoint and ends with the same G, D and G_ema.
#[test]
fn a_killed_and_resumed_gan_run_equals_an_uninterrupted_one() {
    let (cfg, data, clip) = tiny_run(0.032);
    let a = temp_run("straight");
    let (straight, reports) =
        train_gan(&cfg, &data, &clip, &a, false, None, &Device::Cpu, &mut ()).unwrap();
    assert_eq!(reports.len(), 8);
    for key in [
        "G.adv",
        "G.itc",
        "G.itc2",
        "G.itd",
        "G.itd2",
        "D.adv_real",
        "D.itd2",
    ] {
        assert!(reports[1].terms.iter().any(|(k, _)| k == key), "{key}");
    }
    assert!(reports[0].terms.iter().any(|(k, _)| k == "D.r1_penalty"));
    assert!(reports[4].terms.iter().any(|(k, _)| k == "G.pl_penalty"));
    assert!(!reports[5].terms.iter().any(|(k, _)| k == "G.pl_penalty"));
    let b = temp_run("killed");
    let (_, partial) = train_gan(
        &cfg,
        &data,
        &clip,
        &b,
        false,
        None,
        &Device::Cpu,
        &mut KillAt(6),
    )
    .unwrap();
    assert_eq!(partial.len(), 6);
    let (resumed, rest) =
        train_gan(&cfg, &data, &clip, &b, true, None, &Device::Cpu, &mut ()).unwrap();
    assert_eq!(rest.len(), 4, "resumed from the checkpoint after step 4");
    for (x, y, what) in [
        (&straight.g.params, &resumed.g.params, "G"),
        (&straight.d.params, &resumed.d.params, "D"),
        (&straight.g_ema.params, &resumed.g_ema.params, "G_ema"),
        (&straight.g.buffers, &resumed.g.buffers, "G buffers"),
    ] {
        assert_eq!(weights(x), weights(y), "{what} differ after the resume");
    }
    let lines = std::fs::read_to_string(b.metrics()).unwrap();
    assert_eq!(lines.lines().count(), 8, "one metrics line per step");
    assert!(b.g_ema().exists() && b.grid(0.032).exists());
    let other = GanConfig {
        seed: 6,
        ..cfg.clone()
    };
    let err = train_gan(&other, &data, &clip, &b, true, None, &Device::Cpu, &mut ())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("refusing to resume"), "{err}");
    for d in [a, b] {
        std::fs::remove_dir_all(d.0).ok();
    }
}

/// The device-to-host copies made so far, at each step's report.
struct Syncs(Vec<u64>);
impl GanProgress for Syncs {
    fn on_step(&mut self, _: &mindreader::train::gan::StepReport, _: u64) -> bool {
        self.0.push(mindreader::tensor::downloads());
        true
    }
}

/// On a GPU a step waits for the device once, with or without regularisation: when its loss
/// terms (and R1's and path length's numbers) are read back, all in one copy. The gradients'
/// nan_to_num, the regularisers' finite-difference steps and the activation patterns they hold
/// fixed are all computed on the device. Three steps of batch 4 with both regularisers every
/// second step: steps 0 and 2 run R1 and path length, step 1 neither.
#[test]
fn a_gan_step_on_the_gpu_reads_back_once() {
    // Its own stream: the steps after the first replay captured phases.
    let Some(dev) = mindreader::testing::gpu_own_stream() else {
        return;
    };
    let (cfg, data, _) = tiny_run(0.012);
    let cfg = GanConfig {
        snapshot_kimg: 1.0,
        g_reg_interval: 2,
        d_reg_interval: 2,
        ..cfg
    };
    let clip = Clip::load(&fixtures_dir().join("clip").join("tiny"), &dev).unwrap();
    let dir = temp_run("syncs");
    let mut syncs = Syncs(Vec::new());
    let (_, reports) = train_gan(&cfg, &data, &clip, &dir, false, None, &dev, &mut syncs).unwrap();
    assert_eq!(reports.len(), 3);
    let names: Vec<&str> = reports[2].terms.iter().map(|(n, _)| n.as_str()).collect();
    for reg in ["G.pl_penalty", "G.pl_length", "D.r1_penalty"] {
        assert!(names.contains(&reg), "{names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("pl_mean")), "{names:?}");
    assert!(!reports[1].terms.iter().any(|(n, _)| n == "D.r1_penalty"));
    assert_eq!(syncs.0[1] - syncs.0[0], 1, "copies in step 1 (plain)");
    assert_eq!(syncs.0[2] - syncs.0[1], 1, "copies in step 2 (regularised)");
    std::fs::remove_dir_all(dir.0).ok();
}

/// On a GPU the steps after a run's first replay each phase as a CUDA graph, captured once per
/// phase and style-mixing cutoff, with the step's draws written into its buffers. Six steps of
/// batch 4 with path length every second step and R1 every third, style mixing 0.9: the graph
/// run ends with the same G, D, G_ema, buffers and loss terms as the op-by-op run, bit for bit,
/// and a graph run killed after step 3 resumes (capturing afresh) to the same weights.
#[test]
fn replayed_gan_phases_train_bit_for_bit_like_op_by_op_steps() {
    let Some(dev) = mindreader::testing::gpu_own_stream() else {
        return;
    };
    let (cfg, data, _) = tiny_run(0.024);
    let cfg = GanConfig {
        snapshot_kimg: 0.008,
        g_reg_interval: 2,
        d_reg_interval: 3,
        ..cfg
    };
    let clip = Clip::load(&fixtures_dir().join("clip").join("tiny"), &dev).unwrap();
    let run = |graphs: bool, tag: &str, kill: Option<u64>| {
        let cfg = GanConfig {
            cuda_graphs: graphs,
            ..cfg.clone()
        };
        let dir = temp_run(tag);
        let mut kill_at = KillAt(kill.unwrap_or(u64::MAX));
        let (st, reports) =
            train_gan(&cfg, &data, &clip, &dir, false, None, &dev, &mut kill_at).unwrap();
        (st, reports, dir)
    };
    let (graph, graph_reports, a) = run(true, "graphs", None);
    let (eager, eager_reports, b) = run(false, "eager", None);
    assert_eq!(graph_reports.len(), 6);
    let replayed: Vec<u32> = graph_reports.iter().map(|r| r.graph_phases).collect();
    // Step 0 op by op; then Gmain, Dmain and G_ema every step, Greg on 2 and 4, Dreg on 3.
    assert_eq!(replayed, vec![0, 3, 4, 4, 4, 3], "phases replayed per step");
    assert!(eager_reports.iter().all(|r| r.graph_phases == 0));
    for (g, e) in graph_reports.iter().zip(&eager_reports) {
        assert_eq!(g.terms, e.terms, "step {}", g.step);
    }
    for (x, y, what) in [
        (&graph.g.params, &eager.g.params, "G"),
        (&graph.d.params, &eager.d.params, "D"),
        (&graph.g_ema.params, &eager.g_ema.params, "G_ema"),
        (&graph.g.buffers, &eager.g.buffers, "G buffers"),
    ] {
        assert_eq!(weights(x), weights(y), "{what}: graphs against op by op");
    }
    // Killed after step 3 (the checkpoint after step 2), then resumed.
    let (_, partial, c) = run(true, "graphs-killed", Some(4));
    assert_eq!(partial.len(), 4);
    let resume_cfg = GanConfig {
        cuda_graphs: true,
        ..cfg.clone()
    };
    let (resumed, rest) =
        train_gan(&resume_cfg, &data, &clip, &c, true, None, &dev, &mut ()).unwrap();
    assert_eq!(rest.len(), 4, "resumed from the checkpoint after step 2");
    assert_eq!(
        rest[0].graph_phases, 0,
        "a resumed run's first step runs op by op"
    );
    assert_eq!(weights(&resumed.g_ema.params), weights(&eager.g_ema.params));
    assert_eq!(weights(&resumed.d.params), weights(&eager.d.params));
    for d in [a, b, c] {
        std::fs::remove_dir_all(d.0).ok();
    }
}

/// The reference's recorded draws of one phase, replayed in order.
struct Replay {
    draws: Vec<Vec<f32>>,
    next: usize,
}

impl Replay {
    fn new(fx: &Fixture, phase: &str) -> Replay {
        let mut draws = Vec::new();
        while let Some(t) = fx.opt(&format!("{phase}.draw{}", draws.len())) {
            draws.push(t);
        }
        Replay { draws, next: 0 }
    }
    fn take(&mut self) -> Vec<f32> {
        let v = self
            .draws
            .get(self.next)
            .cloned()
            .expect("more draws than the reference made");
        self.next += 1;
        v
    }
    fn finished(&self) {
        assert_eq!(
            self.next,
            self.draws.len(),
            "fewer draws than the reference made"
        );
    }
}

impl Draws for Replay {
    fn randn(&mut self, n: usize) -> Vec<f32> {
        let v = self.take();
        assert_eq!(v.len(), n, "draw {} has another shape", self.next - 1);
        v
    }
    fn randint(&mut self, lo: i64, hi: i64) -> i64 {
        let v = self.take()[0] as i64;
        assert!(lo <= v && v < hi, "draw {v} outside {lo}..{hi}");
        v
    }
    fn rand(&mut self) -> f32 {
        self.take()[0]
    }
}

struct Fixture {
    tensors: std::collections::HashMap<String, Tensor>,
    meta: std::collections::BTreeMap<String, String>,
}

impl Fixture {
    fn open(name: &str) -> Fixture {
        let (t, meta) =
            mindreader::nn::load_safetensors(&fixtures_dir().join("gan").join(name)).unwrap();
        let tensors = t
            .into_iter()
            .map(|(n, t)| (n, t.to_dtype(mindreader::tensor::DType::F32).unwrap()))
            .collect();
        Fixture { tensors, meta }
    }
    fn opt(&self, name: &str) -> Option<Vec<f32>> {
        self.tensors.get(name).map(|t| t.to_vec_f32().unwrap())
    }
    fn vec(&self, name: &str) -> Vec<f32> {
        self.opt(name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"))
    }
    fn mean(&self, name: &str) -> f64 {
        let v = self.vec(name);
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    }
    fn network<N: mindreader::models::lafite::Architecture>(
        &self,
        prefix: &str,
        device: &Device,
    ) -> Network<N> {
        let p = format!("{prefix}.");
        let tensors: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(&p).map(|k| (k.to_string(), t.clone())))
            .collect();
        let meta = std::collections::BTreeMap::from([(
            "init_kwargs".to_string(),
            self.meta[&format!("{prefix}.init_kwargs")].clone(),
        )]);
        Network::from_tensors(tensors, &meta, std::path::Path::new(prefix), device).unwrap()
    }
}

fn near(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: {got} vs the reference's {want}"
    );
}

/// The accumulated gradients against the reference's (`grad` whole, `grad_strided` every 61st):
/// within `rtol` of each tensor's scale, or within `global` of the phase's largest gradient
/// (the finite-difference second derivatives' error is relative to the whole gradient).
fn compare_grads(
    fx: &Fixture,
    phase: &str,
    store: &ParamStore,
    rtol: f32,
    global: f32,
    what: &str,
) {
    let largest = fx
        .tensors
        .iter()
        .filter(|(n, _)| n.starts_with(&format!("{phase}.grad")))
        .flat_map(|(_, t)| t.to_vec_f32().unwrap())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let mut checked = 0;
    for p in store.iter() {
        let got = p.grad.as_ref().map(|g| g.to_vec_f32().unwrap());
        let (want, stride) = match fx.opt(&format!("{phase}.grad.{}", p.name)) {
            Some(w) => (w, 1),
            None => match fx.opt(&format!("{phase}.grad_strided.{}", p.name)) {
                Some(w) => (w, 61),
                None => continue,
            },
        };
        let got: Vec<f32> = match got {
            Some(g) => g.into_iter().step_by(stride).collect(),
            None => vec![0.0; want.len()],
        };
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        mindreader::testing::assert_close(
            &got,
            &want,
            rtol,
            (rtol * scale).max(global * largest),
            &format!("{what} {phase} gradient of {}", p.name),
        );
        checked += 1;
    }
    assert!(checked > 0, "{what} {phase}: no gradient compared");
}

/// Every loss term, the path-length and R1 penalties, and the parameter gradients of the four
/// phases against the fork's `accumulate_gradients` on the same networks, inputs and draws.
#[test]
fn loss_terms_and_gradients_match_the_reference() {
    for (dev, case) in mindreader::testing::devices()
        .into_iter()
        .flat_map(|d| [(d.clone(), "s4_r32"), (d, "s2_r16")])
    {
        let clip = Clip::load(&fixtures_dir().join("clip").join("tiny"), &dev).unwrap();
        let fx = Fixture::open(&format!("{case}.safetensors"));
        let mut g = fx.network::<Generator>("G", &dev);
        let mut d = fx.network::<Discriminator>("D", &dev);
        let case = format!("{case} on {dev}");
        let case = case.as_str();
        let s4 = case.starts_with("s4");
        let cfg = GanLossConfig {
            r1_gamma: 1.0,
            style_mixing: 0.0,
            ..GanLossConfig::default()
        };
        let r = g.config().img_resolution;
        let real = Tensor::from_vec(fx.vec("real"), &[4, 3, r, r], &dev).unwrap();
        let (c1, c2) = (fx.vec("c1"), s4.then(|| fx.vec("c2")));
        let c2r = c2.as_deref().map(|c| (c, 24));
        let z = Tensor::zeros(&[4, g.config().z_dim], &dev).unwrap();
        let tol = 1e-5;

        // Gmain.
        let mut draws = Replay::new(&fx, "Gmain");
        let cond = Conditions::perturbed(&c1, 24, c2r, &mut draws, &dev).unwrap();
        mindreader::testing::assert_close(
            &cond.fts.to_vec_f32().unwrap(),
            &fx.vec("Gmain.G_fts"),
            1e-5,
            1e-6,
            "perturbed conditions",
        );
        let place = Placement::draw(r, 32, &mut draws);
        draws.finished();
        let view = ClipView::new(place, real.shape()[0], r, 32, &dev).unwrap();
        let nets = Nets {
            g: &g.net,
            d: &d.net,
            clip: Some(&clip),
            clip_size: 32,
        };
        let mut tape = mindreader::Tape::new();
        g.params.watch_all(&mut tape);
        let (loss, terms, _) = g_main(
            &mut tape,
            &nets,
            &cfg,
            &z,
            &cond,
            None,
            NoiseMode::Const,
            &view,
            &real,
            None,
        )
        .unwrap();
        let what = format!("{case} Gmain");
        let scores = fx.vec("Gmain.Loss.scores.fake");
        let adv = scores
            .iter()
            .map(|&x| (-x as f64).exp().ln_1p())
            .sum::<f64>()
            / 4.0;
        near(
            terms.get("adv").unwrap(),
            adv,
            tol,
            &format!("{what} softplus(−logits)"),
        );
        let names: &[&str] = if s4 {
            &["itc", "itc2", "itd", "itd2"]
        } else {
            &["itc", "itd"]
        };
        for (k, name) in names.iter().enumerate() {
            let want = fx.mean(&format!("Gmain.contra{k}"));
            near(
                terms.get(name).unwrap(),
                want,
                tol,
                &format!("{what} {name}"),
            );
        }
        near(
            terms.get("loss").unwrap(),
            fx.mean("Gmain.Loss.G.loss"),
            tol,
            &what,
        );
        let grads = tape.backward(&loss).unwrap();
        g.params.accumulate(&grads).unwrap();
        compare_grads(&fx, "Gmain", &g.params, 1e-3, 0.0, case);
        g.params.zero_grad();

        // Greg: path length, gain 4.
        let mut draws = Replay::new(&fx, "Greg");
        let cond = Conditions::perturbed(&c1, 24, c2r, &mut draws, &dev)
            .unwrap()
            .head(2)
            .unwrap();
        let pl_noise = draws.randn(2 * 3 * r * r);
        draws.finished();
        let z2 = Tensor::zeros(&[2, g.config().z_dim], &dev).unwrap();
        let net = &g.net;
        let pl = path_length(
            net,
            &mut g.params,
            &z2,
            &cond.fts,
            None,
            NoiseMode::Const,
            &Tensor::from_vec(path_length_y(&pl_noise, r), &[2, 3, r, r], &dev).unwrap(),
            &Tensor::zeros(&[1], &dev).unwrap(),
            2.0,
            0.01,
            4.0,
        )
        .unwrap();
        near(
            pl.penalty.scalar().unwrap() as f64,
            fx.mean("Greg.Loss.pl_penalty"),
            1e-4,
            &format!("{case} pl_penalty"),
        );
        near(
            pl.mean.scalar().unwrap() as f64,
            fx.mean("Greg.pl_mean"),
            1e-4,
            &format!("{case} pl_mean"),
        );
        compare_grads(&fx, "Greg", &g.params, 2e-3, 5e-4, case);

        // Dmain.
        let mut draws = Replay::new(&fx, "Dmain");
        let cond = Conditions::perturbed(&c1, 24, c2r, &mut draws, &dev).unwrap();
        draws.finished();
        let nets = Nets {
            g: &g.net,
            d: &d.net,
            clip: Some(&clip),
            clip_size: 32,
        };
        let mut tape = mindreader::Tape::new();
        d.params.watch_all(&mut tape);
        let (loss, terms, _) = d_main(
            &mut tape,
            &nets,
            &cfg,
            &z,
            &cond,
            None,
            NoiseMode::Const,
            &real,
        )
        .unwrap();
        let what = format!("{case} Dmain");
        let sp = |v: Vec<f32>, sign: f64| {
            v.iter()
                .map(|&x| (sign * x as f64).exp().ln_1p())
                .sum::<f64>()
                / v.len() as f64
        };
        near(
            terms.get("adv_fake").unwrap(),
            sp(fx.vec("Dmain.Loss.scores.fake"), 1.0),
            tol,
            &what,
        );
        near(
            terms.get("adv_real").unwrap(),
            sp(fx.vec("Dmain.Loss.scores.real"), -1.0),
            tol,
            &what,
        );
        let names: &[&str] = if s4 { &["itd", "itd2"] } else { &["itd"] };
        for (k, name) in names.iter().enumerate() {
            let want = fx.mean(&format!("Dmain.contra{k}"));
            near(
                terms.get(name).unwrap(),
                want,
                tol,
                &format!("{what} {name}"),
            );
        }
        near(
            terms.get("loss").unwrap(),
            fx.mean("Dmain.Loss.D.loss"),
            tol,
            &what,
        );
        let grads = tape.backward(&loss).unwrap();
        d.params.accumulate(&grads).unwrap();
        compare_grads(&fx, "Dmain", &d.params, 1e-3, 0.0, case);
        d.params.zero_grad();

        // Dreg: R1, γ 1, gain 16.
        let mut draws = Replay::new(&fx, "Dreg");
        let cond = Conditions::perturbed(&c1, 24, c2r, &mut draws, &dev).unwrap();
        draws.finished();
        let net = &d.net;
        let out = r1(net, &mut d.params, &real, &cond.fts, 1.0, 16.0).unwrap();
        near(
            out.penalty.scalar().unwrap() as f64,
            fx.mean("Dreg.Loss.r1_penalty"),
            1e-4,
            &format!("{case} R1"),
        );
        compare_grads(&fx, "Dreg", &d.params, 2e-3, 5e-4, case);
    }
}
