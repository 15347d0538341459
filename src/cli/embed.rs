//! `mindreader embed`: CLIP image and/or text embeddings in batches, as .npy.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mindreader::data::DatasetFile;
use mindreader::eval::npy;
use mindreader::models::clip::Clip;
use mindreader::models::clip_tokenizer::ClipTokenizer;
use mindreader::ops::image::clip_preprocess;
use mindreader::{Device, Tape};

#[derive(Args)]
pub struct EmbedArgs {
    /// A Hugging Face CLIP directory (config.json + model.safetensors).
    #[arg(long)]
    pub clip: PathBuf,
    /// PNG image files to embed (RGB or RGBA, 8-bit).
    #[arg(long, num_args = 1.., conflicts_with = "data")]
    pub images: Vec<PathBuf>,
    /// Embed every stimulus image of this prepared dataset, in stimulus order.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A text file with one caption per line to embed.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Output .npy for the image embeddings `[N, projection_dim]` (float32).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Output .npy for the text embeddings (default: beside --out as *_text.npy).
    #[arg(long)]
    pub text_out: Option<PathBuf>,
    /// L2-normalise each embedding.
    #[arg(long)]
    pub normalize: bool,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CLIP's precision: f32, or bf16 (weights and activations, f32 arithmetic inside each op;
    /// for speed on a GPU, embeddings within bf16 precision of f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

pub fn bar(len: usize, unit: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// Decodes an 8-bit RGB/RGBA PNG into `[H, W, 3]`.
fn read_png(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .with_context(|| format!("{}: not a readable PNG", path.display()))?;
    let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let info = reader
        .next_frame(&mut buf)
        .with_context(|| format!("{}: decoding", path.display()))?;
    anyhow::ensure!(
        info.bit_depth == png::BitDepth::Eight,
        "{}: only 8-bit PNGs are supported",
        path.display()
    );
    let px = match info.color_type {
        png::ColorType::Rgb => buf[..info.buffer_size()].to_vec(),
        png::ColorType::Rgba => buf[..info.buffer_size()]
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => buf[..info.buffer_size()]
            .iter()
            .flat_map(|&g| [g, g, g])
            .collect(),
        other => anyhow::bail!(
            "{}: colour type {other:?} is not supported (use RGB, RGBA or grayscale)",
            path.display()
        ),
    };
    Ok((px, info.height as usize, info.width as usize))
}

/// Image embeddings of `count` images produced by `image(i) -> ([H, W, 3], H, W)`, batched by
/// equal size.
pub fn embed_images(
    clip: &Clip,
    device: &Device,
    count: usize,
    batch: usize,
    normalize: bool,
    image: impl FnMut(std::ops::Range<usize>) -> Result<(Vec<u8>, [usize; 4])>,
) -> Result<Vec<f32>> {
    let progress = bar(count, "images");
    let out = embed_images_with(clip, device, count, batch, normalize, &progress, image)?;
    progress.finish_and_clear();
    Ok(out)
}

/// `embed_images` advancing a progress bar the caller owns (several passes, one bar).
pub fn embed_images_with(
    clip: &Clip,
    device: &Device,
    count: usize,
    batch: usize,
    normalize: bool,
    progress: &ProgressBar,
    mut image: impl FnMut(std::ops::Range<usize>) -> Result<(Vec<u8>, [usize; 4])>,
) -> Result<Vec<f32>> {
    let size = clip.config.vision.image_size;
    let mut out = Vec::with_capacity(count * clip.config.projection_dim);
    let mut tape = Tape::inference();
    for start in (0..count).step_by(batch.max(1)) {
        let range = start..(start + batch.max(1)).min(count);
        let (pixels, shape) = image(range.clone())?;
        let x = clip_preprocess(&pixels, shape, size, device)?;
        let mut e = clip
            .encode_image(&mut tape, &x)?
            .to_dtype(mindreader::tensor::DType::F32)?;
        if normalize {
            e = mindreader::ops::l2norm::l2_normalize(&mut tape, &e, 1e-12)?;
        }
        out.extend(e.to_vec_f32()?);
        progress.inc(range.len() as u64);
    }
    Ok(out)
}

/// Text embeddings of `texts`, batched.
pub fn embed_texts(
    clip: &Clip,
    texts: &[String],
    batch: usize,
    normalize: bool,
) -> Result<Vec<f32>> {
    let tok = ClipTokenizer::shared()?;
    let context = clip.config.text.max_position_embeddings;
    let progress = bar(texts.len(), "texts");
    let mut out = Vec::with_capacity(texts.len() * clip.config.projection_dim);
    let mut tape = Tape::inference();
    for chunk in texts.chunks(batch.max(1)) {
        let ids = tok.tokenize_batch(chunk, context)?;
        let mut e = clip
            .encode_text(&mut tape, &ids, context)?
            .to_dtype(mindreader::tensor::DType::F32)?;
        if normalize {
            e = mindreader::ops::l2norm::l2_normalize(&mut tape, &e, 1e-12)?;
        }
        out.extend(e.to_vec_f32()?);
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    Ok(out)
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    anyhow::ensure!(
        !args.images.is_empty() || args.data.is_some() || args.text.is_some(),
        "nothing to embed: give --images, --data and/or --text"
    );
    let clip = Clip::load_as(&args.clip, &device, super::parse_clip_dtype(&args.dtype)?)?;
    let dim = clip.config.projection_dim;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("embeddings.npy"));
    if let Some(data) = &args.data {
        let file = DatasetFile::open(data)?;
        let [h, w] = file.summary().image_size;
        let m = file.summary().stimuli;
        let e = embed_images(&clip, &device, m, args.batch, args.normalize, |r| {
            Ok((file.images_range(r.start, r.len())?, [r.len(), h, w, 3]))
        })?;
        npy::write_f32(&out, &e, &[m, dim])?;
        println!(
            "wrote {} ({m} × {dim}) from the stimuli of {}",
            out.display(),
            data.display()
        );
    } else if !args.images.is_empty() {
        let paths = &args.images;
        // One image per batch when sizes differ; PNGs are decoded as they are needed.
        let e = embed_images(&clip, &device, paths.len(), 1, args.normalize, |r| {
            let (px, h, w) = read_png(&paths[r.start])?;
            Ok((px, [1, h, w, 3]))
        })?;
        npy::write_f32(&out, &e, &[paths.len(), dim])?;
        println!("wrote {} ({} × {dim})", out.display(), paths.len());
    }
    if let Some(text) = &args.text {
        let lines: Vec<String> = std::fs::read_to_string(text)
            .with_context(|| format!("reading {}", text.display()))?
            .lines()
            .map(str::to_string)
            .collect();
        let e = embed_texts(&clip, &lines, args.batch, args.normalize)?;
        let text_out = args.text_out.clone().unwrap_or_else(|| {
            out.with_file_name(format!(
                "{}_text.npy",
                out.file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("embeddings")
            ))
        });
        npy::write_f32(&text_out, &e, &[lines.len(), dim])?;
        println!(
            "wrote {} ({} × {dim}) from {}",
            text_out.display(),
            lines.len(),
            text.display()
        );
    }
    Ok(())
}
