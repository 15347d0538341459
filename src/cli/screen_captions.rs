//! `mindreader screen-captions`: Mind Reader's caption screening and CLIP targets.
//!
//! For each stimulus, CLIP ranks its captions by image–text cosine similarity; the best `keep`
//! are stored (`screening/caption_index`), and two target matrices are written for
//! `train-mapper`: `targets/clip_image` (the image embedding clamped to ±1.5 and L2-normalised,
//! as Mind Reader prepares its image targets — here without the training augmentations) and
//! `targets/clip_caption` (the mean of the kept captions' embeddings, L2-normalised).
//!
//! With `--augment-views K` it also writes `augmented/clip_image` `[K, M, D]`: each stimulus
//! through K independent draws of Mind Reader's training augmentation (`ops::augment`, on the
//! device), quantised to 8 bits as its `ToPILImage` does, then CLIP-encoded, clamped and
//! normalised like the plain target — the reference's own path (sklin93/mind-reader,
//! `nsd_utils.NSDwithCLIP.__getitem__`: `get_img_trans(extra_aug)` with its default `toPIL=True`,
//! CLIP's PIL preprocess, `encode_image`, `thresholding(±1.5)`, L2 norm). The reference
//! augments afresh every time a sample is loaded; `train-mapper --augmented` draws one of the K
//! stored views per row and epoch, which is the same distribution when K ≥ the epoch count and
//! costs K encodings instead of one per epoch.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use mindreader::data::dataset::{write_augmented, write_caption_choice, write_target};
use mindreader::data::{DatasetFile, Target};
use mindreader::eval::retrieval::unit_rows;
use mindreader::models::clip::Clip;
use mindreader::ops::augment::{to_pil_u8, unit_planar, view_seed, MindReaderAugment};
use mindreader::{Device, Tensor};

use super::embed::{bar, embed_images, embed_images_with, embed_texts};

#[derive(Args)]
pub struct ScreenCaptionsArgs {
    /// A Hugging Face CLIP directory (config.json + model.safetensors).
    #[arg(long)]
    pub clip: PathBuf,
    /// The prepared dataset to screen (targets are added to it in place).
    #[arg(long)]
    pub data: PathBuf,
    /// Captions kept per stimulus.
    #[arg(long, default_value_t = 1)]
    pub keep: usize,
    /// Also store K augmented views of the image target (`augmented/clip_image`, Mind Reader's
    /// training augmentations) for `train-mapper --augmented`; 0 = none.
    #[arg(long, default_value_t = 0)]
    pub augment_views: usize,
    /// Seed of the augmentation draws (view k of stimulus s is a pure function of seed, k, s).
    #[arg(long, default_value_t = 42)]
    pub augment_seed: u64,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CLIP's precision: f32, or bf16 (weights and activations, f32 inside each op; for speed on
    /// a GPU, embeddings within bf16 precision of f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

/// CLIP's image target from raw image embeddings `[M, D]`: clamped to ±1.5, L2-normalised rows.
fn image_target(embeddings: &[f32], d: usize) -> Vec<f32> {
    let clamped: Vec<f32> = embeddings.iter().map(|v| v.clamp(-1.5, 1.5)).collect();
    unit_rows(&clamped, d)
}

/// `views` augmented image targets of every stimulus, `[views, M, D]`.
fn augmented_targets(
    clip: &Clip,
    device: &Device,
    file: &DatasetFile,
    views: usize,
    seed: u64,
    batch: usize,
) -> Result<Vec<f32>> {
    let (m, [h, w]) = (file.summary().stimuli, file.summary().image_size);
    let d = clip.config.projection_dim;
    let aug = MindReaderAugment::default();
    let progress = bar(views * m, "augmented images");
    let mut out = Vec::with_capacity(views * m * d);
    for k in 0..views {
        let view_seed = view_seed(seed, k);
        let e = embed_images_with(clip, device, m, batch, true, &progress, |r| {
            let n = r.len();
            let planar = unit_planar(&file.images_range(r.start, n)?, [n, h, w])?;
            let x = Tensor::from_vec(planar, &[n, 3, h, w], device)?;
            let y = aug.apply_indexed(&x, view_seed, r.start)?;
            Ok((to_pil_u8(&y.to_vec_f32()?, [n, h, w])?, [n, h, w, 3]))
        })?;
        out.extend(image_target(&e, d));
    }
    progress.finish_and_clear();
    Ok(out)
}

pub fn run(args: ScreenCaptionsArgs) -> Result<()> {
    anyhow::ensure!(args.keep >= 1, "--keep must be at least 1");
    let device = super::parse_device(&args.device)?;
    let clip = Clip::load_as(&args.clip, &device, super::parse_clip_dtype(&args.dtype)?)?;
    let d = clip.config.projection_dim;
    let file = DatasetFile::open(&args.data)?;
    let (m, [h, w]) = (file.summary().stimuli, file.summary().image_size);
    let captions = file.captions()?;
    println!(
        "screen-captions: {m} stimuli of {} with CLIP from {} on {device}",
        args.data.display(),
        args.clip.display()
    );
    let images = embed_images(&clip, &device, m, args.batch, true, |r| {
        Ok((file.images_range(r.start, r.len())?, [r.len(), h, w, 3]))
    })?;
    // Every non-empty caption, flattened, with its (stimulus, slot).
    let mut texts = Vec::new();
    let mut owner = Vec::new();
    for (s, row) in captions.iter().enumerate() {
        for (slot, c) in row.iter().enumerate() {
            if !c.is_empty() {
                texts.push(c.clone());
                owner.push((s, slot));
            }
        }
    }
    let text_emb = embed_texts(&clip, &texts, args.batch, true)?;
    let views = if args.augment_views > 0 {
        Some(augmented_targets(
            &clip,
            &device,
            &file,
            args.augment_views,
            args.augment_seed,
            args.batch,
        )?)
    } else {
        None
    };
    drop(file);
    let mut scored: Vec<Vec<(f32, usize, usize)>> = vec![Vec::new(); m];
    for (k, &(s, slot)) in owner.iter().enumerate() {
        let t = &text_emb[k * d..][..d];
        let cos: f32 = images[s * d..][..d].iter().zip(t).map(|(a, b)| a * b).sum();
        scored[s].push((cos, slot, k));
    }
    let mut chosen = Vec::with_capacity(m * args.keep);
    let mut caption_target = vec![0f32; m * d];
    for (s, list) in scored.iter_mut().enumerate() {
        anyhow::ensure!(
            !list.is_empty(),
            "{}: stimulus {s} has no captions to screen",
            args.data.display()
        );
        list.sort_by(|a, b| b.0.total_cmp(&a.0));
        let row = &mut caption_target[s * d..][..d];
        for i in 0..args.keep {
            // Fewer captions than --keep: repeat the best.
            let (_, slot, k) = list[i.min(list.len() - 1)];
            chosen.push(slot as u32);
            for (acc, v) in row.iter_mut().zip(&text_emb[k * d..][..d]) {
                *acc += v;
            }
        }
    }
    let caption_target = unit_rows(&caption_target, d);
    let image_target = image_target(&images, d);
    let model = args.clip.display().to_string();
    write_caption_choice(
        &args.data,
        &chosen,
        args.keep,
        &format!("caption slots ranked by CLIP image-text cosine ({model}), best first"),
    )?;
    write_target(
        &args.data,
        &Target {
            name: "clip_image".into(),
            dim: d,
            data: image_target,
            description: format!("CLIP image embedding ({model}), clamped to ±1.5, L2-normalised"),
        },
    )?;
    write_target(
        &args.data,
        &Target {
            name: "clip_caption".into(),
            dim: d,
            data: caption_target,
            description: format!(
                "mean CLIP text embedding of the {} screened caption(s) ({model}), L2-normalised",
                args.keep
            ),
        },
    )?;
    if let Some(views) = &views {
        let k = args.augment_views;
        write_augmented(&args.data, "clip_image", k, d, views, &format!("{k} views of each stimulus through Mind Reader's training augmentation (seed {}), CLIP image embedding ({model}), clamped to ±1.5, L2-normalised", args.augment_seed))?;
        println!("wrote augmented/clip_image [{k}, {m}, {d}]");
    }
    let agree = scored
        .iter()
        .filter(|l| l.len() > 1 && l[0].0 > l[l.len() - 1].0)
        .count();
    println!("wrote screening/caption_index [{m}, {}], targets/clip_image and targets/clip_caption [{m}, {d}] into {} ({agree} stimuli had a strict best caption)", args.keep, args.data.display());
    Ok(())
}
