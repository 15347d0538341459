//! `mindreader generate`: pictures from a Lafite generator, conditioned on CLIP-space vectors
//! (a mapper's predictions or CLIP embeddings, `.npy`) or on text through a CLIP text tower.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use mindreader::eval::{images, npy};
use mindreader::models::clip::Clip;
use mindreader::models::lafite::{Generator, Network};
use mindreader::nn::NoiseMode;
use mindreader::train::import;
use mindreader::{Device, Tape, Tensor};

#[derive(Args)]
pub struct GenerateArgs {
    /// The generator: a Lafite checkpoint (safetensors with the fork's state_dict names and the
    /// constructor's `init_kwargs` in its metadata), or a Lafite / Mind Reader network snapshot
    /// `.pkl` read directly (its `G_ema`; see --network).
    #[arg(long)]
    pub generator: PathBuf,
    /// Which network of a snapshot `.pkl` draws: G_ema (the default, as the reference evaluates)
    /// or G.
    #[arg(long)]
    pub network: Option<String>,
    /// The condition, one row per picture: `[N, F]` float32 `.npy` (e.g. `predict`'s mapper
    /// embeddings, or `embed`'s CLIP embeddings). For structure 4, the first (image) condition.
    #[arg(long, conflicts_with = "text", required_unless_present = "text")]
    pub fts: Option<PathBuf>,
    /// Structure 4's second (caption) condition `[N, F2]`.
    #[arg(long, requires = "fts")]
    pub fts2: Option<PathBuf>,
    /// L2-normalise each condition row first (Lafite's conditions are unit CLIP vectors).
    #[arg(long)]
    pub normalize: bool,
    /// A Hugging Face CLIP directory for --text.
    #[arg(long, requires = "text")]
    pub clip: Option<PathBuf>,
    /// Text prompts, one picture each: text-to-image as Lafite does it (the unit CLIP text
    /// embedding; structure 4 takes it as both conditions).
    #[arg(long, num_args = 1.., requires = "clip")]
    pub text: Vec<String>,
    /// Latents `[N, z_dim]` float32 `.npy` (default: N(0, 1) drawn from --seed).
    #[arg(long, conflicts_with = "seed")]
    pub z: Option<PathBuf>,
    /// The seed of the latents (and of random noise); 0 when not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Per-layer noise: const (the layers' fixed noise), random (from the seed) or none.
    #[arg(long, default_value = "const")]
    pub noise_mode: String,
    /// Truncation ψ: 1 keeps w, smaller values pull it towards the average w.
    #[arg(long, default_value_t = 1.0)]
    pub truncation: f32,
    /// Pictures per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// A directory (one PNG per picture, `000.png` …, and `grid.png`), or a `.npy` path for the
    /// raw images `[N, C, H, W]` in the generator's range (about [−1, 1]).
    #[arg(long)]
    pub out: PathBuf,
    /// auto (a GPU when there is one), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

fn read_rows(path: &Path, what: &str) -> Result<(Vec<f32>, usize, usize)> {
    let (data, shape) = npy::read_f32(path)?;
    let &[n, d] = &shape[..] else {
        anyhow::bail!(
            "{}: {what} must be [N, D], got shape {shape:?}",
            path.display()
        );
    };
    anyhow::ensure!(n > 0, "{}: {what} has no rows", path.display());
    Ok((data, n, d))
}

fn normalize_rows(v: &mut [f32], d: usize) {
    for row in v.chunks_mut(d.max(1)) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The condition rows `[N, F (+ F2)]` the generator reads.
fn conditions(
    args: &GenerateArgs,
    g: &Network<Generator>,
    device: &Device,
) -> Result<(Vec<f32>, usize)> {
    let c = g.config();
    let (f, f2, structure) = (c.f_dim, c.f_dim2, c.structure);
    if !args.text.is_empty() {
        let dir = args.clip.as_ref().context("--text needs --clip DIR")?;
        let clip = Clip::load(dir, device)?;
        let e = super::embed::embed_texts(&clip, &args.text, args.batch, true)?;
        let d = clip.config.projection_dim;
        anyhow::ensure!(
            d == f && (structure != 4 || d == f2),
            "the CLIP text embeddings are {d} wide but the generator's conditions are {f}{} ({}): use a CLIP of that width",
            if structure == 4 { format!(" + {f2}") } else { String::new() },
            args.generator.display()
        );
        let n = args.text.len();
        if structure == 4 {
            // Lafite's text-to-image with two conditions: the text embedding as both.
            let rows = e
                .chunks(d)
                .flat_map(|r| r.iter().chain(r.iter()).copied())
                .collect();
            return Ok((rows, n));
        }
        return Ok((e, n));
    }
    let path = args.fts.as_ref().context("give --fts or --text")?;
    let (mut a, n, d) = read_rows(path, "--fts")?;
    anyhow::ensure!(
        d == f,
        "{}: conditions are {d} wide, but {} expects f_dim = {f}",
        path.display(),
        args.generator.display()
    );
    if args.normalize {
        normalize_rows(&mut a, d);
    }
    if structure != 4 {
        anyhow::ensure!(
            args.fts2.is_none(),
            "--fts2 is for structure-4 generators; {} has structure {structure}",
            args.generator.display()
        );
        return Ok((a, n));
    }
    let path2 = args.fts2.as_ref().with_context(|| {
        format!(
            "{} has structure 4 (two conditions): give --fts2 with the caption condition [N, {f2}] (or --text)",
            args.generator.display()
        )
    })?;
    let (mut b, n2, d2) = read_rows(path2, "--fts2")?;
    anyhow::ensure!(
        n2 == n && d2 == f2,
        "{}: the second condition is [{n2}, {d2}], expected [{n}, {f2}]",
        path2.display()
    );
    if args.normalize {
        normalize_rows(&mut b, d2);
    }
    let rows = a
        .chunks(f)
        .zip(b.chunks(f2))
        .flat_map(|(x, y)| x.iter().chain(y).copied())
        .collect();
    Ok((rows, n))
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    anyhow::ensure!(
        args.truncation.is_finite(),
        "--truncation must be a number, got {}",
        args.truncation
    );
    let seed = args.seed.unwrap_or(0);
    let noise = match args.noise_mode.as_str() {
        "const" => NoiseMode::Const,
        "random" => NoiseMode::Random(seed),
        "none" => NoiseMode::None,
        other => anyhow::bail!("unknown --noise-mode `{other}` (use const, random or none)"),
    };
    let g: Network<Generator> =
        import::load_network(&args.generator, args.network.as_deref(), &device)?;
    let c = g.config().clone();
    let (fts, n) = conditions(&args, &g, &device)?;
    let z = match &args.z {
        Some(path) => {
            let (z, nz, d) = read_rows(path, "--z")?;
            anyhow::ensure!(
                nz == n && d == c.z_dim,
                "{}: latents are [{nz}, {d}], expected [{n}, {}]",
                path.display(),
                c.z_dim
            );
            z
        }
        None => Tensor::randn(&[n, c.z_dim], 1.0, seed, &Device::Cpu)?.to_vec_f32()?,
    };
    let width = c.fts_width();
    let (r, ch) = (c.img_resolution, c.img_channels);
    let bar = super::embed::bar(n, "pictures");
    let mut out = Vec::with_capacity(n * ch * r * r);
    let mut tape = Tape::inference();
    for start in (0..n).step_by(args.batch.max(1)) {
        let m = args.batch.max(1).min(n - start);
        let zb = Tensor::from_slice(&z[start * c.z_dim..][..m * c.z_dim], &[m, c.z_dim], &device)?;
        let fb = Tensor::from_slice(&fts[start * width..][..m * width], &[m, width], &device)?;
        let noise_b = match noise {
            NoiseMode::Random(s) => NoiseMode::Random(s.wrapping_add(start as u64)),
            other => other,
        };
        let img = g
            .net
            .forward(&mut tape, &zb, &fb, args.truncation, noise_b)?;
        out.extend(img.to_vec_f32()?);
        bar.inc(m as u64);
    }
    bar.finish_and_clear();
    if args.out.extension().is_some_and(|e| e == "npy") {
        npy::write_f32(&args.out, &out, &[n, ch, r, r])?;
        println!(
            "wrote {} ({n} × {ch} × {r} × {r}, the generator's range)",
            args.out.display()
        );
    } else {
        let pics = images::to_rgb8(&out, [n, ch, r, r])?;
        let grid = images::write_pngs(&args.out, &pics, r, r)?;
        println!(
            "wrote {n} pictures ({r}×{r}) to {} and the grid {}",
            args.out.display(),
            grid.display()
        );
    }
    Ok(())
}
