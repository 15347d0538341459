//! The GAN stage's loss terms as the mind-reader fork computes them (`training/loss.py`,
//! `StyleGAN2Loss.accumulate_gradients`): non-saturating G and D losses, the contrastive terms
//! between CLIP's (and D's) view of an image and its condition, the condition perturbation and
//! style mixing. R1 and path length are in `regularize.rs`.
//!
//! Every random draw goes through [`Draws`] in the reference's order, so a fixture can replay the
//! reference's own draws and the trainer can use seeded streams.

use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::models::clip::Clip;
use crate::models::lafite::{Discriminator, DiscriminatorOutput, Generator};
use crate::nn::NoiseMode;
use crate::ops::channels::broadcast_mul;
use crate::ops::concat::{concat, slice};
use crate::ops::elementwise as ew;
use crate::ops::l2norm::l2_normalize;
use crate::ops::matmul::matmul;
use crate::ops::reduce::{mean_all, sum_all};
use crate::ops::transpose::{reshape, transpose};
use crate::rng::Rng;
use crate::tensor::{Device, Tensor};

/// CLIP's pixel normalisation (OpenAI's mean and std), which `full_preprocess` applies.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The reference's random draws, in the order it makes them.
pub trait Draws {
    /// Standard normals (`torch.randn(shape)`).
    fn randn(&mut self, n: usize) -> Vec<f32>;
    /// An integer in `lo..hi` (`torch.randint(lo, hi, ())`, `random_(lo, hi)`).
    fn randint(&mut self, lo: i64, hi: i64) -> i64;
    /// Uniform in [0, 1) (`torch.rand([])`).
    fn rand(&mut self) -> f32;
}

impl Draws for Rng {
    fn randn(&mut self, n: usize) -> Vec<f32> {
        let mut v = vec![0.0; n];
        self.fill_normal(&mut v);
        v
    }
    fn randint(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo).max(1) as usize) as i64
    }
    fn rand(&mut self) -> f32 {
        self.f32()
    }
}

/// The loss's hyper-parameters; `Default` is the reference's (train.py 125–178, 238–239).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GanLossConfig {
    /// Contrastive temperature (the fork divides cosines by it; 0 uses the bare cosine).
    pub temp: f32,
    /// 0: softmax over images for each condition; in (0, 1): a mix with the row softmax.
    pub lam: f32,
    /// Image–condition contrast through D's semantic head (G and D steps).
    pub itd: f32,
    /// Image–condition contrast through CLIP (G step).
    pub itc: f32,
    /// Generated–real contrast through D's semantic head (G step).
    pub iid: f32,
    /// Generated–real contrast through CLIP (G step; needs the real images' CLIP features).
    pub iic: f32,
    /// Not in the reference: the weight of a paired pixel term, `mean (G(c) − x)²` between the
    /// image generated from a stimulus' condition and the image that stimulus showed (pix2pix's
    /// L1 term, squared). It teaches a small generator where and in which colour things are far
    /// sooner than the adversarial and contrastive terms alone; 0 (the default) is the fork.
    pub recon: f32,
    pub r1_gamma: f32,
    pub pl_weight: f32,
    pub pl_batch_shrink: usize,
    pub pl_decay: f32,
    pub style_mixing: f32,
}

impl Default for GanLossConfig {
    fn default() -> Self {
        GanLossConfig {
            temp: 0.5,
            lam: 0.0,
            itd: 10.0,
            itc: 10.0,
            iid: 0.0,
            iic: 0.0,
            recon: 0.0,
            r1_gamma: 10.0,
            pl_weight: 2.0,
            pl_batch_shrink: 2,
            pl_decay: 0.01,
            style_mixing: 0.9,
        }
    }
}

impl GanLossConfig {
    /// The reference's defaults for a run at this resolution and batch: γ = 0.0002·R²/batch
    /// (train.py 288).
    pub fn reference(resolution: usize, batch: usize) -> GanLossConfig {
        GanLossConfig {
            r1_gamma: 0.0002 * (resolution * resolution) as f32 / batch.max(1) as f32,
            ..GanLossConfig::default()
        }
    }
}

/// The fork's `contra_loss(temp, mat1, mat2, lam).mean()` as one scalar.
///
/// Its quirk, kept: with `temp` > 0 it returns `log(temp · diag softmax(cos/temp))`, so every
/// term carries an extra `ln temp` (a constant: the gradient is InfoNCE's). With `lam` = 0 (the
/// default) only the softmax over `mat1`'s rows for each `mat2` row (dim 0) is used; with
/// `lam` in (0, 1) the mix `lam·row + (1 − lam)·column`; any other `lam` the row softmax alone.
/// Gradients flow into both matrices.
pub fn contra_loss(
    tape: &mut Tape,
    temp: f32,
    mat1: &Tensor,
    mat2: &Tensor,
    lam: f32,
) -> Result<Tensor> {
    let (b, b2) = (mat1.shape()[0], mat2.shape()[0]);
    if mat1.rank() != 2 || mat2.rank() != 2 || b != b2 || mat1.shape()[1] != mat2.shape()[1] {
        return Err(Error::shape(
            "contra_loss",
            format!("{:?} against {:?}", mat1.shape(), mat2.shape()),
        ));
    }
    let a = l2_normalize(tape, mat1, 1e-8)?;
    let c = l2_normalize(tape, mat2, 1e-8)?;
    if temp <= 0.0 {
        // The mean cosine of the pairs: the diagonal of a·cᵀ, row by row, without the product.
        let pairs = ew::mul(tape, &a, &c)?;
        let s = sum_all(tape, &pairs)?;
        return ew::scale(tape, &s, 1.0 / b as f32);
    }
    let cos = matmul(tape, &a, &c, false, true)?;
    let sim = ew::scale(tape, &cos, 1.0 / temp)?;
    // The mean diagonal of log_softmax over columns (lam = 0), rows (lam outside (0, 1)), or
    // their lam-mix is −InfoNCE with that row weight: one fused op on the device, no identity
    // matrix, no transpose.
    let row_weight = if lam == 0.0 {
        0.0
    } else if lam > 0.0 && lam < 1.0 {
        lam
    } else {
        1.0
    };
    let nce = crate::ops::loss::infonce(tape, &sim, row_weight)?;
    let mixed = ew::scale(tape, &nce, -1.0)?;
    ew::add_scalar(tape, &mixed, temp.ln())
}

/// `normalize(0.9·c + 0.1·u/‖u‖)` row by row (loss.py 449–460): the reference's perturbation of
/// each condition, drawn afresh on every call. `c` is `[n, f]` on the host.
pub fn perturb(c: &[f32], f: usize, draws: &mut dyn Draws) -> Vec<f32> {
    const AUG: f32 = 0.1;
    let u = draws.randn(c.len());
    let mut out = vec![0.0f32; c.len()];
    for ((o, c), u) in out.chunks_mut(f).zip(c.chunks(f)).zip(u.chunks(f)) {
        let un = u.iter().map(|v| v * v).sum::<f32>().sqrt();
        for ((o, &c), &u) in o.iter_mut().zip(c).zip(u) {
            *o = c * (1.0 - AUG) + u / un * AUG;
        }
        let n = o.iter().map(|v| v * v).sum::<f32>().sqrt();
        o.iter_mut().for_each(|v| *v /= n);
    }
    out
}

/// One phase's conditions after the perturbation: the first (image mapper) and, for structure
/// 4, the second (caption mapper), and `fts`, what G and D read (their concatenation).
pub struct Conditions {
    pub c1: Tensor,
    pub c2: Option<Tensor>,
    pub fts: Tensor,
}

impl Conditions {
    /// Perturbs the raw conditions `c1` `[n, f1]` (and `c2` `[n, f2]`) on the host, in the
    /// reference's draw order: the perturbed first and second conditions, and for structure 4
    /// their row-wise concatenation `fts` (structure 2 reads the first as `fts`).
    pub fn perturb_host(
        c1: &[f32],
        f1: usize,
        c2: Option<(&[f32], usize)>,
        draws: &mut dyn Draws,
    ) -> (Vec<f32>, Option<(Vec<f32>, Vec<f32>)>) {
        let p1 = perturb(c1, f1, draws);
        let second = c2.map(|(c2, f2)| {
            let p2 = perturb(c2, f2, draws);
            let fts: Vec<f32> = p1
                .chunks(f1)
                .zip(p2.chunks(f2))
                .flat_map(|(a, b)| a.iter().chain(b).copied())
                .collect();
            (p2, fts)
        });
        (p1, second)
    }

    /// Perturbs the raw conditions `c1` `[n, f1]` (and `c2` `[n, f2]`) on the host, in the
    /// reference's draw order, and uploads them.
    pub fn perturbed(
        c1: &[f32],
        f1: usize,
        c2: Option<(&[f32], usize)>,
        draws: &mut dyn Draws,
        device: &Device,
    ) -> Result<Conditions> {
        let n = c1.len() / f1.max(1);
        let f2 = c2.map(|(_, f2)| f2).unwrap_or(0);
        let (p1, second) = Conditions::perturb_host(c1, f1, c2, draws);
        let c1 = Tensor::from_vec(p1, &[n, f1], device)?;
        let second = second
            .map(|(p2, fts)| {
                Ok::<_, Error>((
                    Tensor::from_vec(p2, &[n, f2], device)?,
                    Tensor::from_vec(fts, &[n, f1 + f2], device)?,
                ))
            })
            .transpose()?;
        Ok(Conditions::from_tensors(c1, second))
    }

    /// From the perturbed first condition and, for structure 4, the second and `fts`.
    pub fn from_tensors(c1: Tensor, second: Option<(Tensor, Tensor)>) -> Conditions {
        match second {
            None => Conditions {
                fts: c1.clone(),
                c1,
                c2: None,
            },
            Some((c2, fts)) => Conditions {
                c1,
                c2: Some(c2),
                fts,
            },
        }
    }

    /// The first `n` rows (path length runs on a shrunk batch).
    pub fn head(&self, n: usize) -> Result<Conditions> {
        let mut off = Tape::inference();
        Ok(Conditions {
            c1: slice(&mut off, &self.c1, 0, 0, n)?,
            c2: self
                .c2
                .as_ref()
                .map(|c| slice(&mut off, c, 0, 0, n))
                .transpose()?,
            fts: slice(&mut off, &self.fts, 0, 0, n)?,
        })
    }
}

/// Style mixing's draws (loss.py 282–288): with probability p, the layers from `cutoff` on take
/// a second latent from fresh z.
pub struct Mixing {
    pub cutoff: usize,
    pub z2: Vec<f32>,
}

impl Mixing {
    /// The reference's draws: randn_like(z), cutoff in 1..num_ws, then the coin. None when the
    /// probability is 0 (the reference then draws nothing).
    pub fn draw(
        p: f32,
        n: usize,
        z_dim: usize,
        num_ws: usize,
        draws: &mut dyn Draws,
    ) -> Option<Mixing> {
        if p <= 0.0 {
            return None;
        }
        let z2 = draws.randn(n * z_dim);
        let cutoff = draws.randint(1, num_ws as i64) as usize;
        let cutoff = if draws.rand() < p { cutoff } else { num_ws };
        Some(Mixing { cutoff, z2 })
    }
}

/// Style mixing on the device: the latents from `cutoff` on come from `z2`'s mapping.
pub struct StyleMix {
    pub cutoff: usize,
    pub z2: Tensor,
}

impl Mixing {
    /// The draw's second latent as a tensor shaped like `z`.
    pub fn to_device(&self, z: &Tensor) -> Result<StyleMix> {
        Ok(StyleMix {
            cutoff: self.cutoff,
            z2: Tensor::from_slice(&self.z2, z.shape(), z.device())?,
        })
    }
}

impl StyleMix {
    /// The per-layer latents: `w` everywhere, or `w2 = mapping(z2)` from the cutoff on.
    pub fn latents(
        mix: Option<&StyleMix>,
        tape: &mut Tape,
        g: &Generator,
        w: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let num_ws = g.config.num_ws();
        let mut ws = vec![w.clone(); num_ws];
        if let Some(m) = mix.filter(|m| m.cutoff < num_ws) {
            let w2 = g.mapping.forward(tape, &m.z2, 1.0)?;
            for w in &mut ws[m.cutoff..] {
                *w = w2.clone();
            }
        }
        Ok(ws)
    }
}

/// G's output for one phase: the images, the per-layer latents, and the mapped w of z (for the
/// `w_avg` tracking the reference does in training mode).
pub struct Generated {
    pub img: Tensor,
    pub ws: Vec<Tensor>,
    pub w: Tensor,
}

/// The fork's `run_G`: mapping (with style mixing), then synthesis on `fts`.
pub fn run_g(
    tape: &mut Tape,
    g: &Generator,
    z: &Tensor,
    fts: &Tensor,
    mixing: Option<&StyleMix>,
    noise: NoiseMode,
) -> Result<Generated> {
    let w = g.mapping.forward(tape, z, 1.0)?;
    let ws = StyleMix::latents(mixing, tape, g, &w)?;
    let img = g.synthesis(tape, &ws, fts, noise)?;
    Ok(Generated { img, ws, w })
}

/// Where `full_preprocess` puts a generated image in CLIP's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Images smaller than CLIP's input: at (left, top) in a canvas of ones.
    Pad { left: usize, top: usize },
    /// Otherwise: the square `side` at (left, top), resized bicubically to CLIP's input.
    Crop {
        side: usize,
        left: usize,
        top: usize,
    },
}

impl Placement {
    /// The reference's draws for an image of side `full` and CLIP input `fix` (loss.py 321–343,
    /// ratio 0.5).
    pub fn draw(full: usize, fix: usize, draws: &mut dyn Draws) -> Placement {
        if full < fix {
            let room = (fix - full) as i64;
            let left = draws.randint(0, room) as usize;
            let top = draws.randint(0, room) as usize;
            Placement::Pad { left, top }
        } else {
            let side = draws.randint((full / 2) as i64, full as i64) as usize;
            let room = (full - side) as i64;
            let left = draws.randint(0, room) as usize;
            let top = draws.randint(0, room) as usize;
            Placement::Crop { side, left, top }
        }
    }
}

/// PyTorch's bicubic interpolation (A = −0.75, align_corners False, edge-clamped, no
/// antialiasing) from `n_in` to `n_out` samples as an `[n_out, n_in]` matrix.
pub fn bicubic_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    const A: f32 = -0.75;
    let cubic1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cubic2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = n_in as f32 / n_out as f32;
    let mut m = vec![0.0f32; n_out * n_in];
    for o in 0..n_out {
        let real = scale * (o as f32 + 0.5) - 0.5;
        let i0 = real.floor();
        let t = real - i0;
        let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
        for (k, wk) in w.iter().enumerate() {
            let idx = (i0 as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[o * n_in + idx] += wk;
        }
    }
    m
}

/// The fork's `full_preprocess`: generated images `[N, 3, R, R]` in about [−1, 1] → CLIP's input
/// `[N, 3, fix, fix]`: placed or cropped and resized, then `(x + 1)/2` and CLIP's mean/std.
pub fn full_preprocess(
    tape: &mut Tape,
    img: &Tensor,
    fix: usize,
    place: Placement,
) -> Result<Tensor> {
    let &[n, _, h, _] = img.shape() else {
        return Err(Error::shape(
            "full_preprocess",
            format!("{:?}", img.shape()),
        ));
    };
    ClipView::new(place, n, h, fix, img.device())?.apply(tape, img)
}

/// `full_preprocess` for one placement, as tensors: `placed = R_y · x · R_xᵀ (+ canvas)`, then
/// `x·scale + shift` per channel. `R_y`, `R_x` `[fix, R]` hold the crop's bicubic weights at its
/// offset (or the pad's shift), and `canvas` the pad's ones around the image. The shapes do not
/// depend on the placement, so a CUDA graph replays any placement written into the same buffers.
pub struct ClipView {
    pub rows: Tensor,
    pub cols: Tensor,
    pub canvas: Option<Tensor>,
    pub scale: Tensor,
    pub shift: Tensor,
}

impl ClipView {
    /// The host values of each tensor, in field order (`canvas` only for a pad).
    pub fn host(
        place: Placement,
        n: usize,
        full: usize,
        fix: usize,
    ) -> Vec<(Vec<f32>, Vec<usize>)> {
        let mut rows = vec![0.0f32; fix * full];
        let mut cols = vec![0.0f32; fix * full];
        let mut canvas = None;
        match place {
            Placement::Pad { left, top } => {
                for i in 0..full {
                    rows[(top + i) * full + i] = 1.0;
                    cols[(left + i) * full + i] = 1.0;
                }
                let inside = |v: usize, at: usize| (at..at + full).contains(&v);
                canvas = Some(
                    (0..fix * fix)
                        .map(|k| (!(inside(k / fix, top) && inside(k % fix, left))) as u8 as f32)
                        .collect(),
                );
            }
            Placement::Crop { side, left, top } => {
                let a = bicubic_matrix(side, fix);
                for o in 0..fix {
                    for i in 0..side {
                        rows[o * full + top + i] = a[o * side + i];
                        cols[o * full + left + i] = a[o * side + i];
                    }
                }
            }
        }
        // ((x + 1)/2 − mean)/std = x·(0.5/std) + (0.5 − mean)/std, per channel.
        let scale: Vec<f32> = (0..n)
            .flat_map(|_| CLIP_STD.iter().map(|s| 0.5 / s))
            .collect();
        let shift: Vec<f32> = (0..3).map(|k| (0.5 - CLIP_MEAN[k]) / CLIP_STD[k]).collect();
        let mut out = vec![(rows, vec![fix, full]), (cols, vec![fix, full])];
        out.extend(canvas.map(|c| (c, vec![fix * fix])));
        out.push((scale, vec![n, 3]));
        out.push((shift, vec![3]));
        out
    }

    /// The placement's tensors on `device`.
    pub fn new(
        place: Placement,
        n: usize,
        full: usize,
        fix: usize,
        device: &Device,
    ) -> Result<ClipView> {
        let t: Vec<Tensor> = ClipView::host(place, n, full, fix)
            .into_iter()
            .map(|(v, shape)| Tensor::from_vec(v, &shape, device))
            .collect::<Result<_>>()?;
        ClipView::from_tensors(t)
    }

    /// From the tensors in `host`'s order.
    pub fn from_tensors(t: Vec<Tensor>) -> Result<ClipView> {
        let mut t = t.into_iter();
        let count = t.len();
        let (rows, cols, canvas, scale, shift) = match count {
            4 => (t.next(), t.next(), None, t.next(), t.next()),
            5 => (t.next(), t.next(), t.next(), t.next(), t.next()),
            _ => (None, None, None, None, None),
        };
        match (rows, cols, scale, shift) {
            (Some(rows), Some(cols), Some(scale), Some(shift)) => Ok(ClipView {
                rows,
                cols,
                canvas,
                scale,
                shift,
            }),
            _ => Err(Error::Invalid(format!(
                "a CLIP view is 4 or 5 tensors, got {count}"
            ))),
        }
    }

    /// CLIP's input for generated images `[N, 3, R, R]` (recorded: gradients flow to the pixels).
    pub fn apply(&self, tape: &mut Tape, img: &Tensor) -> Result<Tensor> {
        let &[n, c, h, w] = img.shape() else {
            return Err(Error::shape(
                "full_preprocess",
                format!("{:?}", img.shape()),
            ));
        };
        let (fix, full) = (self.rows.shape()[0], self.rows.shape()[1]);
        if h != full || w != full || self.scale.shape() != [n, c] {
            return Err(Error::shape(
                "full_preprocess",
                format!(
                    "images {:?} for a view of {full}² images, {:?} channel scales",
                    img.shape(),
                    self.scale.shape()
                ),
            ));
        }
        let u = reshape(tape, img, &[n * c * h, w])?;
        let u = matmul(tape, &u, &self.cols, false, true)?;
        let u = reshape(tape, &u, &[n, c, h, fix])?;
        let u = transpose(tape, &u, 2, 3)?;
        let u = reshape(tape, &u, &[n * c * fix, h])?;
        let v = matmul(tape, &u, &self.rows, false, true)?;
        let v = reshape(tape, &v, &[n, c, fix, fix])?;
        let mut placed = transpose(tape, &v, 2, 3)?;
        if let Some(canvas) = &self.canvas {
            let flat = reshape(tape, &placed, &[n * c, fix * fix])?;
            let flat = ew::bias_add(tape, &flat, canvas, 1)?;
            placed = reshape(tape, &flat, &[n, c, fix, fix])?;
        }
        let scaled = broadcast_mul(tape, &placed, &self.scale)?;
        ew::bias_add(tape, &scaled, &self.shift, 1)
    }
}

/// The networks a loss step reads: G, D, and the frozen CLIP with its input side (None: the
/// CLIP terms must be off, as in the bench's step).
pub struct Nets<'a> {
    pub g: &'a Generator,
    pub d: &'a Discriminator,
    pub clip: Option<&'a Clip>,
    pub clip_size: usize,
}

/// Each named term of one phase, as it enters the phase's loss (before the gain). The scalars
/// stay on the device until `values` reads them, once the step's work is queued (no host sync
/// per term inside the step).
#[derive(Default)]
pub struct Terms(pub Vec<(&'static str, Tensor)>);

impl Terms {
    pub(super) fn push(&mut self, name: &'static str, t: &Tensor) -> Result<()> {
        self.0.push((name, t.clone()));
        Ok(())
    }
    pub fn get(&self, name: &str) -> Option<f64> {
        let t = &self.0.iter().find(|(n, _)| *n == name)?.1;
        t.scalar().ok().map(|v| v as f64)
    }
    /// Every term of every phase, named `{phase}.{term}`, read back to the host in one copy:
    /// one host synchronisation for a step's numbers instead of one per term.
    pub fn read_all(phases: &[(&str, &Terms)]) -> Result<Vec<(String, f64)>> {
        let mut names = Vec::new();
        let mut scalars = Vec::new();
        for (phase, terms) in phases {
            for (n, t) in &terms.0 {
                names.push(format!("{phase}.{n}"));
                scalars.push(t.reshaped(&[1])?);
            }
        }
        if scalars.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&Tensor> = scalars.iter().collect();
        let values = concat(&mut Tape::inference(), &refs, 0)?.to_vec_f32()?;
        Ok(names
            .into_iter()
            .zip(values)
            .map(|(n, v)| (n, v as f64))
            .collect())
    }
}

/// Σ of `−weight·contra_loss(mat1, condition)` over the condition(s), added to `loss`.
fn minus_contra(
    tape: &mut Tape,
    loss: Tensor,
    weight: f32,
    cfg: &GanLossConfig,
    mat1: &Tensor,
    cond: &Tensor,
    terms: &mut Terms,
    name: &'static str,
) -> Result<Tensor> {
    let c = contra_loss(tape, cfg.temp, mat1, cond, cfg.lam)?;
    terms.push(name, &c)?;
    let c = ew::scale(tape, &c, -weight)?;
    ew::add(tape, &loss, &c)
}

/// `−itd·C(D_fts, c₁)` (and `−itd·C(D_fts2, c₂)` for structure 4) added to `loss`: the same in
/// the G step (generated images) and the D step (real ones).
fn minus_itd(
    tape: &mut Tape,
    loss: Tensor,
    itd: f32,
    cfg: &GanLossConfig,
    out: &DiscriminatorOutput,
    cond: &Conditions,
    terms: &mut Terms,
) -> Result<Tensor> {
    let mut loss = minus_contra(tape, loss, itd, cfg, &out.d_fts, &cond.c1, terms, "itd")?;
    if let (Some(c2), Some(d2)) = (&cond.c2, &out.d_fts2) {
        loss = minus_contra(tape, loss, itd, cfg, d2, c2, terms, "itd2")?;
    }
    Ok(loss)
}

/// The weights of structure 4 (loss.py 496–499): itd, itc and iid are halved, iic is not.
fn weights(cfg: &GanLossConfig, structure4: bool) -> (f32, f32, f32) {
    let h = if structure4 { 0.5 } else { 1.0 };
    (cfg.itd * h, cfg.itc * h, cfg.iid * h)
}

/// Gmain (loss.py 528–620): `mean softplus(−D(G(c))) − itc·C(CLIP(G), c) − itd·C(D_fts(G), c)`
/// (structure 4: both conditions, halved weights), plus iic/iid and our paired `recon` when set. `clip_real` are the
/// real images' normalised CLIP features (needed for iic), `real` the real images (for iid).
#[allow(clippy::too_many_arguments)]
pub fn g_main(
    tape: &mut Tape,
    nets: &Nets,
    cfg: &GanLossConfig,
    z: &Tensor,
    cond: &Conditions,
    mixing: Option<&StyleMix>,
    noise: NoiseMode,
    view: &ClipView,
    real: &Tensor,
    clip_real: Option<&Tensor>,
) -> Result<(Tensor, Terms, Generated)> {
    let s4 = cond.c2.is_some();
    let (itd, itc, iid) = weights(cfg, s4);
    let mut terms = Terms::default();
    let gen = run_g(tape, nets.g, z, &cond.fts, mixing, noise)?;
    let out = nets.d.forward(tape, &gen.img, &cond.fts)?;
    let neg = ew::scale(tape, &out.logits, -1.0)?;
    let sp = ew::softplus(tape, &neg)?;
    let mut loss = mean_all(tape, &sp)?;
    terms.push("adv", &loss)?;
    if itc > 0.0 || cfg.iic > 0.0 {
        let clip = nets
            .clip
            .ok_or_else(|| Error::Invalid("itc/iic > 0 need a CLIP".into()))?;
        let x = view.apply(tape, &gen.img)?;
        let f = clip.encode_image(tape, &x)?;
        let f = l2_normalize(tape, &f, 1e-12)?;
        if itc > 0.0 {
            loss = minus_contra(tape, loss, itc, cfg, &f, &cond.c1, &mut terms, "itc")?;
            if let Some(c2) = &cond.c2 {
                loss = minus_contra(tape, loss, itc, cfg, &f, c2, &mut terms, "itc2")?;
            }
        }
        if cfg.iic > 0.0 {
            let r = clip_real.ok_or_else(|| {
                Error::Invalid("iic > 0 needs the real images' CLIP features".into())
            })?;
            loss = minus_contra(tape, loss, cfg.iic, cfg, &f, r, &mut terms, "iic")?;
        }
    }
    if itd > 0.0 {
        loss = minus_itd(tape, loss, itd, cfg, &out, cond, &mut terms)?;
    }
    if cfg.recon > 0.0 {
        let n = gen.img.shape()[0];
        let flat = |t: &mut Tape, x: &Tensor| reshape(t, x, &[n, x.numel() / n.max(1)]);
        let (g, x) = (flat(tape, &gen.img)?, flat(tape, real)?);
        let e = crate::ops::loss::mse(tape, &g, &x)?;
        terms.push("recon", &e)?;
        let w = ew::scale(tape, &e, cfg.recon)?;
        loss = ew::add(tape, &loss, &w)?;
    }
    if iid > 0.0 {
        let r = tape.no_grad(|t| nets.d.forward(t, real, &cond.fts))?;
        loss = minus_contra(
            tape, loss, iid, cfg, &r.d_fts, &out.d_fts, &mut terms, "iid",
        )?;
        if let (Some(r2), Some(d2)) = (&r.d_fts2, &out.d_fts2) {
            loss = minus_contra(tape, loss, iid, cfg, r2, d2, &mut terms, "iid2")?;
        }
    }
    terms.push("loss", &loss)?;
    Ok((loss, terms, gen))
}

/// Dmain (loss.py 648–700): `mean softplus(D(G(c))) + mean softplus(−D(x)) − itd·C(D_fts(x), c)`
/// (structure 4: both conditions, halved). G is run without recording (only D is trained).
#[allow(clippy::too_many_arguments)]
pub fn d_main(
    tape: &mut Tape,
    nets: &Nets,
    cfg: &GanLossConfig,
    z: &Tensor,
    cond: &Conditions,
    mixing: Option<&StyleMix>,
    noise: NoiseMode,
    real: &Tensor,
) -> Result<(Tensor, Terms, Generated)> {
    let (itd, _, _) = weights(cfg, cond.c2.is_some());
    let mut terms = Terms::default();
    let gen = tape.no_grad(|t| run_g(t, nets.g, z, &cond.fts, mixing, noise))?;
    let fake = nets.d.forward(tape, &gen.img, &cond.fts)?;
    let sp = ew::softplus(tape, &fake.logits)?;
    let gen_loss = mean_all(tape, &sp)?;
    terms.push("adv_fake", &gen_loss)?;
    let out = nets.d.forward(tape, real, &cond.fts)?;
    let neg = ew::scale(tape, &out.logits, -1.0)?;
    let sp = ew::softplus(tape, &neg)?;
    let real_loss = mean_all(tape, &sp)?;
    terms.push("adv_real", &real_loss)?;
    let mut loss = ew::add(tape, &gen_loss, &real_loss)?;
    if itd > 0.0 {
        loss = minus_itd(tape, loss, itd, cfg, &out, cond, &mut terms)?;
    }
    terms.push("loss", &loss)?;
    Ok((loss, terms, gen))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `full_preprocess` written out per pixel in f64: the pad's canvas of ones or the crop's
    /// separable bicubic resize, then `((x + 1)/2 − mean)/std`. `x` is `[n, 3, full, full]`.
    fn preprocess_reference(
        x: &[f64],
        n: usize,
        full: usize,
        fix: usize,
        place: Placement,
    ) -> Vec<f64> {
        let mut out = vec![0.0; n * 3 * fix * fix];
        for img in 0..n * 3 {
            let src = &x[img * full * full..][..full * full];
            let dst = &mut out[img * fix * fix..][..fix * fix];
            match place {
                Placement::Pad { left, top } => {
                    for (k, o) in dst.iter_mut().enumerate() {
                        let (y, xx) = (k / fix, k % fix);
                        let inside =
                            (top..top + full).contains(&y) && (left..left + full).contains(&xx);
                        *o = if inside {
                            src[(y - top) * full + xx - left]
                        } else {
                            1.0
                        };
                    }
                }
                Placement::Crop { side, left, top } => {
                    let a = bicubic_matrix(side, fix);
                    for (k, o) in dst.iter_mut().enumerate() {
                        let (y, xx) = (k / fix, k % fix);
                        for i in 0..side {
                            for j in 0..side {
                                *o += a[y * side + i] as f64
                                    * src[(top + i) * full + left + j]
                                    * a[xx * side + j] as f64;
                            }
                        }
                    }
                }
            }
            let c = img % 3;
            for o in dst.iter_mut() {
                *o = ((*o + 1.0) / 2.0 - CLIP_MEAN[c] as f64) / CLIP_STD[c] as f64;
            }
        }
        out
    }

    /// CLIP's view of a generated image as placement matrices is the fork's pad or crop-and-resize
    /// (at sizes off any tile, on every device), and its gradient is that linear map's.
    #[test]
    fn clip_view_pads_and_crops_as_full_preprocess() {
        let cases = [
            (7, 11, Placement::Pad { left: 2, top: 3 }),
            (
                13,
                9,
                Placement::Crop {
                    side: 8,
                    left: 3,
                    top: 5,
                },
            ),
            (
                13,
                13,
                Placement::Crop {
                    side: 13,
                    left: 0,
                    top: 0,
                },
            ),
        ];
        for device in crate::testing::devices() {
            for (full, fix, place) in cases {
                let n = 2;
                let x = crate::testing::random_vec(n * 3 * full * full, 17);
                let img = Tensor::from_slice(&x, &[n, 3, full, full], &device).unwrap();
                let mut tape = Tape::new();
                tape.watch(&img);
                let got = full_preprocess(&mut tape, &img, fix, place).unwrap();
                let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                let want: Vec<f32> = preprocess_reference(&x64, n, full, fix, place)
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let what = format!("{place:?} {full}→{fix} on {device}");
                crate::testing::assert_close(&got.to_vec_f32().unwrap(), &want, 1e-5, 1e-5, &what);
                // Σ w ⊙ out: the gradient against finite differences of the reference.
                let w = crate::testing::random_vec(got.numel(), 18);
                let wt = Tensor::from_slice(&w, got.shape(), &device).unwrap();
                let weighted = ew::mul(&mut tape, &got, &wt).unwrap();
                let s = sum_all(&mut tape, &weighted).unwrap();
                let grads = tape.backward(&s).unwrap();
                let analytic: Vec<f64> = grads
                    .get(&img)
                    .unwrap()
                    .to_vec_f32()
                    .unwrap()
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let f = |xs: &[f64]| {
                    preprocess_reference(xs, n, full, fix, place)
                        .iter()
                        .zip(&w)
                        .map(|(a, &b)| a * b as f64)
                        .sum::<f64>()
                };
                crate::testing::gradcheck(&what, f, &x64, &analytic);
            }
        }
    }

    /// Rows of the interpolation matrix sum to one, and an identity resize is the identity.
    #[test]
    fn bicubic_matrix_is_a_partition_of_unity() {
        for (i, o) in [(7, 13), (32, 32), (29, 11)] {
            let m = bicubic_matrix(i, o);
            for r in m.chunks(i) {
                assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        let m = bicubic_matrix(5, 5);
        for r in 0..5 {
            for c in 0..5 {
                assert!((m[r * 5 + c] - (r == c) as u8 as f32).abs() < 1e-6);
            }
        }
    }

    /// The fork's contra_loss written out in f64 (`a`, `b` are `[n, f]`).
    fn contra_reference(a: &[f64], b: &[f64], n: usize, f: usize, temp: f64, lam: f64) -> f64 {
        let unit = |v: &[f64]| {
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-8);
            v.iter().map(|x| x / norm).collect::<Vec<_>>()
        };
        let (ua, ub): (Vec<_>, Vec<_>) = (
            a.chunks(f).map(unit).collect(),
            b.chunks(f).map(unit).collect(),
        );
        let cos = |i: usize, j: usize| ua[i].iter().zip(&ub[j]).map(|(x, y)| x * y).sum::<f64>();
        if temp <= 0.0 {
            return (0..n).map(|i| cos(i, i)).sum::<f64>() / n as f64;
        }
        let s = |i: usize, j: usize| cos(i, j) / temp;
        let row = |i: usize| s(i, i) - (0..n).map(|j| s(i, j).exp()).sum::<f64>().ln();
        let col = |j: usize| s(j, j) - (0..n).map(|i| s(i, j).exp()).sum::<f64>().ln();
        let mean = |g: &dyn Fn(usize) -> f64| (0..n).map(g).sum::<f64>() / n as f64;
        let mixed = if lam == 0.0 {
            mean(&col)
        } else if lam > 0.0 && lam < 1.0 {
            lam * mean(&row) + (1.0 - lam) * mean(&col)
        } else {
            mean(&row)
        };
        mixed + temp.ln()
    }

    /// Value and both gradients of contra_loss (the fused InfoNCE inside) against the f64
    /// formula and its central differences, for every branch of temp and lam.
    #[test]
    fn contra_loss_value_and_gradients_match_the_written_out_formula() {
        let (n, f) = (5, 3);
        let (av, bv) = (
            crate::testing::random_vec(n * f, 11),
            crate::testing::random_vec(n * f, 12),
        );
        let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (a64, b64) = (wide(&av), wide(&bv));
        for device in crate::testing::devices() {
            for (temp, lam) in [(0.5, 0.0), (0.3, 0.25), (0.5, 1.0), (0.7, -1.0), (0.0, 0.0)] {
                let ta = Tensor::from_slice(&av, &[n, f], &device).unwrap();
                let tb = Tensor::from_slice(&bv, &[n, f], &device).unwrap();
                let mut tape = Tape::new();
                tape.watch(&ta);
                tape.watch(&tb);
                let loss = contra_loss(&mut tape, temp, &ta, &tb, lam).unwrap();
                let what = format!("{device} temp {temp} lam {lam}");
                let want = contra_reference(&a64, &b64, n, f, temp as f64, lam as f64);
                let got = loss.scalar().unwrap() as f64;
                assert!((got - want).abs() < 1e-5, "{what}: {got} vs {want}");
                let grads = tape.backward(&loss).unwrap();
                let eps = 1e-4;
                for (which, t) in [(0, &ta), (1, &tb)] {
                    let g = grads.get(t).unwrap().to_vec_f32().unwrap();
                    for i in 0..n * f {
                        let at = |delta: f64| {
                            let (mut a, mut b) = (a64.clone(), b64.clone());
                            if which == 0 {
                                a[i] += delta
                            } else {
                                b[i] += delta
                            }
                            contra_reference(&a, &b, n, f, temp as f64, lam as f64)
                        };
                        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                        assert!(
                            (g[i] as f64 - numeric).abs() < 1e-4 + 1e-3 * numeric.abs(),
                            "{what}: d/d{}[{i}] {} vs {numeric}",
                            ["mat1", "mat2"][which],
                            g[i]
                        );
                    }
                }
            }
        }
    }

    /// contra_loss against the formula written out on a 3×2 example.
    #[test]
    fn contra_loss_is_log_temp_times_the_column_softmax() {
        let a = [1.0f32, 0.0, 0.6, 0.8, 0.0, 1.0];
        let b = [0.8f32, 0.6, 1.0, 0.0, 0.0, 2.0];
        let (ta, tb) = (
            Tensor::from_slice(&a, &[3, 2], &Device::Cpu).unwrap(),
            Tensor::from_slice(&b, &[3, 2], &Device::Cpu).unwrap(),
        );
        let unit = |v: &[f32]| {
            let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
            [v[0] / n, v[1] / n]
        };
        let temp = 0.5f64;
        let sim = |i: usize, j: usize| {
            let (x, y) = (unit(&a[i * 2..]), unit(&b[j * 2..]));
            (x[0] * y[0] + x[1] * y[1]) as f64 / temp
        };
        let want: f64 = (0..3)
            .map(|j| {
                let z: f64 = (0..3).map(|i| sim(i, j).exp()).sum();
                (temp * sim(j, j).exp() / z).ln()
            })
            .sum::<f64>()
            / 3.0;
        let got = contra_loss(&mut Tape::inference(), 0.5, &ta, &tb, 0.0)
            .unwrap()
            .scalar()
            .unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
