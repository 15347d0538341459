//! `mindreader eval-images`: how good reconstructions are, in the field's metrics (the low- and
//! high-level columns of MindEye's and Brain-Diffuser's tables), each beside its chance level.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use mindreader::data::DatasetFile;
use mindreader::eval::image_metrics::{box_downsample, pixel_metrics, two_way_identification};
use mindreader::eval::{images, npy, retrieval};
use mindreader::models::clip::Clip;

#[derive(Args)]
pub struct EvalImagesArgs {
    /// The reconstructions: `[N, 3, H, W]` float32 `.npy` in the generator's range [−1, 1] (what
    /// `generate --out X.npy` writes), or a directory holding `recon.npy` and `index.npy`.
    #[arg(long)]
    pub recon: PathBuf,
    /// The stimulus index of each reconstruction (`predict --index-out`'s `.npy`); default
    /// `index.npy` beside a --recon directory.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// The dataset holding the seen images.
    #[arg(long)]
    pub data: PathBuf,
    /// A Hugging Face CLIP directory: adds the high-level metrics (2-way identification, cosine
    /// and top-1 retrieval in CLIP image space).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Where to write the metrics (JSON); they are printed too.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Seed of the retrieval's random candidate sets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn read_index(path: &Path, n: usize, stimuli: usize) -> Result<Vec<usize>> {
    let (idx, shape) = npy::read_f32(path)?;
    anyhow::ensure!(
        idx.len() == n,
        "{}: {} indices ({shape:?}) for {n} reconstructions",
        path.display(),
        idx.len()
    );
    idx.iter()
        .map(|&v| {
            anyhow::ensure!(
                v >= 0.0 && v.fract() == 0.0 && (v as usize) < stimuli,
                "{}: {v} is not a stimulus index of a dataset with {stimuli} stimuli",
                path.display()
            );
            Ok(v as usize)
        })
        .collect()
}

pub fn run(args: EvalImagesArgs) -> Result<()> {
    let (recon_path, index_path) = if args.recon.is_dir() {
        let idx = args.index.clone().unwrap_or(args.recon.join("index.npy"));
        (args.recon.join("recon.npy"), idx)
    } else {
        let idx = args.index.clone().context(
            "--index is needed with a .npy --recon (the stimulus of each row: predict --index-out)",
        )?;
        (args.recon.clone(), idx)
    };
    let (recon, shape) = npy::read_f32(&recon_path)?;
    let [n, c, h, w] = shape[..] else {
        anyhow::bail!(
            "{}: shape {shape:?}, expected [N, 3, H, W]",
            recon_path.display()
        );
    };
    anyhow::ensure!(
        c == 3 && n >= 2,
        "{}: shape {shape:?}: expected [N ≥ 2, 3, H, W]",
        recon_path.display()
    );
    let file = DatasetFile::open(&args.data)?;
    let index = read_index(&index_path, n, file.summary().stimuli)?;
    let [sh, sw] = file.summary().image_size;

    // both sides as [n, h, w, 3] in [0, 1], at the smaller resolution (box-averaged down)
    let recon_rgb8 = images::to_rgb8(&recon, [n, c, h, w])?;
    let all = file.images()?;
    let seen_rgb8: Vec<Vec<u8>> = index
        .iter()
        .map(|&s| all[s * sh * sw * 3..(s + 1) * sh * sw * 3].to_vec())
        .collect();
    let to01 =
        |v: &[Vec<u8>]| -> Vec<f32> { v.iter().flatten().map(|&b| b as f32 / 255.0).collect() };
    let (mut r01, mut s01) = (to01(&recon_rgb8), to01(&seen_rgb8));
    let (eh, ew) = (h.min(sh), w.min(sw));
    for (x, xh, xw, what) in [
        (&mut r01, h, w, "reconstructions"),
        (&mut s01, sh, sw, "seen images"),
    ] {
        if (xh, xw) != (eh, ew) {
            anyhow::ensure!(
                xh % eh == 0 && xw % ew == 0 && xh / eh == xw / ew,
                "the {what} are {xh}×{xw} and the others {eh}×{ew}: not an integer downscale"
            );
            *x = box_downsample(x, [n, xh, xw, 3], xh / eh);
        }
    }
    let px = pixel_metrics(&r01, &s01, [n, eh, ew, 3]).map_err(anyhow::Error::msg)?;
    let mut metrics = serde_json::json!({
        "n": n,
        "resolution": [eh, ew],
        "pixel_correlation": {"value": px.pixel_correlation, "chance": 0.0},
        "ssim": {"value": px.ssim, "chance": null,
                 "how": "scikit-image structural_similarity, gaussian σ 1.5, population covariance, data_range 1, RGB channels averaged"},
        "two_way_pixels": {"value": px.two_way_pixels, "chance": 0.5},
    });

    if let Some(dir) = &args.clip {
        let device = super::parse_device(&args.device)?;
        let clip = Clip::load(dir, &device)?;
        let embed = |imgs: &[Vec<u8>], ih: usize, iw: usize| {
            super::embed::embed_images(&clip, &device, n, args.batch, false, |range| {
                let pixels: Vec<u8> = imgs[range.clone()].iter().flatten().copied().collect();
                Ok((pixels, [range.len(), ih, iw, 3]))
            })
        };
        let er = embed(&recon_rgb8, h, w)?;
        let es = embed(&seen_rgb8, sh, sw)?;
        let d = clip.config.projection_dim;
        let r = retrieval(&er, &es, d, n.min(300), 30, args.seed)?;
        metrics["clip_two_way"] =
            serde_json::json!({"value": two_way_identification(&er, &es, d), "chance": 0.5});
        metrics["clip_cosine"] = serde_json::json!({"value": r.mean_cosine, "chance": null});
        metrics["clip_top1_retrieval"] = serde_json::json!({
            "value": r.image_from_brain, "chance": r.chance, "way": r.way, "batches": r.batches,
            "how": "the seen image among `way` seen images, from its reconstruction, by CLIP cosine"});
    }
    let text = serde_json::to_string_pretty(&metrics)?;
    println!("{text}");
    if let Some(out) = &args.out {
        mindreader::fsio::write_atomic(out, text.as_bytes())?;
    }
    Ok(())
}
