//! `mindreader reconstruct`: a train-gan run's G_ema turns held-out fMRI into pictures.
//!
//! mappers → conditions (each L2-normalised, as G saw them after the perturbation in training)
//! → G_ema with z = 0 (the training z) and its constant noise: one PNG per stimulus, a grid of
//! seen | reconstructed pairs with the screened caption under each, and `recon.npy`,
//! `index.npy`, `conditions.npy` and `condition-table.npy` for `eval-images`. `--condition true`
//! feeds the dataset's own CLIP targets instead (the ceiling: a perfect mapper), `--condition
//! shuffled` another stimulus' fMRI (the floor).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use mindreader::data::sheet::{contact_sheet, Tile};
use mindreader::data::DatasetFile;
use mindreader::eval::{images, npy};
use mindreader::models::lafite::Generator;
use mindreader::train::gan::trainer::render;
use mindreader::train::gan::{GanData, GanRunDir};
use mindreader::train::import;

use super::predict::parse_split;
use super::train_gan::{mapped_conditions, run_file};

#[derive(Args)]
pub struct ReconstructArgs {
    /// A train-gan run directory (reads G_ema.safetensors and run.json's mappers).
    #[arg(long)]
    pub run: PathBuf,
    /// The dataset [default: the run's].
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "test")]
    pub split: String,
    #[arg(long)]
    pub out: PathBuf,
    /// mapped: the mappers on the fMRI; true: the dataset's CLIP targets (--targets), the
    /// ceiling; shuffled: the mapped conditions of another stimulus (a fixed derangement), the floor.
    #[arg(long, default_value = "mapped")]
    pub condition: String,
    /// The target matrices of --condition true, one per condition.
    #[arg(long, value_delimiter = ',', default_value = "clip_image,clip_caption")]
    pub targets: Vec<String>,
    /// At most this many stimuli (the split's first ones).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(args: ReconstructArgs) -> Result<()> {
    let device = super::parse_device(&args.device)?;
    let split = parse_split(&args.split)?;
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_file(&args.run))
            .with_context(|| format!("reading {}", run_file(&args.run).display()))?,
    )
    .with_context(|| format!("{} is not JSON", run_file(&args.run).display()))?;
    let data_path = match &args.data {
        Some(p) => p.clone(),
        None => PathBuf::from(info["data"].as_str().context("run.json lacks `data`")?),
    };
    let mappers: Vec<PathBuf> =
        serde_json::from_value(info["mappers"].clone()).context("run.json lacks `mappers`")?;
    let dir = GanRunDir(args.run.clone());
    let g = import::load_network::<Generator>(&dir.g_ema(), None, &device)?;
    let file = DatasetFile::open(&data_path)?;
    let r = g.config().img_resolution;
    let conds: Vec<(Vec<f32>, usize)> = match args.condition.as_str() {
        "mapped" | "shuffled" => mapped_conditions(&file, &mappers, &device)?,
        "true" => args
            .targets
            .iter()
            .take(mappers.len())
            .map(|t| Ok(file.target(t)?))
            .collect::<Result<_>>()?,
        other => anyhow::bail!("--condition must be mapped, true or shuffled, got `{other}`"),
    };
    let mut rows: Vec<u32> = (0..file.split().len() as u32)
        .filter(|&i| file.split()[i as usize] == split)
        .collect();
    if let Some(l) = args.limit {
        rows.truncate(l);
    }
    anyhow::ensure!(rows.len() >= 2, "fewer than 2 {} stimuli", args.split);
    // The rows whose conditions are used: the stimulus itself, or the next one (shuffled).
    let source: Vec<u32> = if args.condition == "shuffled" {
        (0..rows.len())
            .map(|i| rows[(i + 1) % rows.len()])
            .collect()
    } else {
        rows.clone()
    };
    let mut conds = conds.into_iter();
    let (c1, f1) = conds.next().context("no condition")?;
    let data = GanData {
        real: Vec::new(),
        c1,
        f1,
        c2: conds.next(),
        rows: Vec::new(),
        preview: Vec::new(),
    };
    let c = g.config();
    anyhow::ensure!(
        f1 == c.f_dim
            && data.c2.as_ref().map(|x| x.1).unwrap_or(0)
                == if c.structure == 4 { c.f_dim2 } else { 0 },
        "the conditions ({f1}-d{}) do not fit the generator (structure {}, {}+{})",
        data.c2
            .as_ref()
            .map(|x| format!(" + {}-d", x.1))
            .unwrap_or_default(),
        c.structure,
        c.f_dim,
        c.f_dim2
    );
    let mut recon = Vec::with_capacity(rows.len() * 3 * r * r);
    for chunk in source.chunks(32) {
        recon.extend(render(&g.net, &data, chunk, &device)?.to_vec_f32()?);
    }
    let n = rows.len();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    npy::write_f32(&args.out.join("recon.npy"), &recon, &[n, 3, r, r])?;
    let idx: Vec<f32> = rows.iter().map(|&i| i as f32).collect();
    npy::write_f32(&args.out.join("index.npy"), &idx, &[n])?;
    // The first (image) condition each picture was drawn from, and every stimulus' (the probe of
    // eval-images' `in_condition` is fitted on the training stimuli's).
    let used: Vec<f32> = source
        .iter()
        .flat_map(|&i| data.c1[i as usize * f1..][..f1].iter().copied())
        .collect();
    npy::write_f32(&args.out.join("conditions.npy"), &used, &[n, f1])?;
    let stimuli = data.c1.len() / f1;
    npy::write_f32(
        &args.out.join("condition-table.npy"),
        &data.c1,
        &[stimuli, f1],
    )?;
    let rgb = images::to_rgb8(&recon, [n, 3, r, r])?;
    let pngs = args.out.join("images");
    images::write_pngs(&pngs, &rgb, r, r)?;

    // Seen | reconstructed, side by side at the reconstruction's size, captioned.
    let [sh, sw] = file.summary().image_size;
    anyhow::ensure!(
        sh >= r && sh % r == 0 && sw == sh,
        "{}: {sh}×{sw} images do not downscale to the generator's {r}²",
        data_path.display()
    );
    let all = file.images()?;
    let captions = file.captions()?;
    let pairs: Vec<Vec<u8>> = rows
        .iter()
        .zip(&rgb)
        .map(|(&s, fake)| {
            let seen = &all[s as usize * sh * sw * 3..][..sh * sw * 3];
            let f = sh / r;
            let mut pair = vec![255u8; r * 2 * r * 3];
            for y in 0..r {
                for x in 0..r {
                    for k in 0..3 {
                        // nearest sample of the seen image at the reconstruction's size
                        let v = seen[((y * f) * sw + x * f) * 3 + k];
                        pair[(y * 2 * r + x) * 3 + k] = v;
                        pair[(y * 2 * r + r + x) * 3 + k] = fake[(y * r + x) * 3 + k];
                    }
                }
            }
            pair
        })
        .collect();
    let tiles: Vec<Tile> = rows
        .iter()
        .zip(&pairs)
        .map(|(&s, p)| Tile {
            image: p,
            label: format!("#{s}"),
            captions: captions
                .get(s as usize)
                .and_then(|c| c.first())
                .map(|c| vec![(c.clone(), false)])
                .unwrap_or_default(),
        })
        .collect();
    let grid = args.out.join("grid.png");
    contact_sheet(&tiles[..n.min(32)], [r, 2 * r], 8).save_png(&grid)?;
    // A compositional world: a grid of each half of the test split as well.
    if let Some(unseen) = file.unseen_combination()? {
        for (name, want) in [("ordinary", false), ("unseen_combination", true)] {
            let part: Vec<Tile> = rows
                .iter()
                .zip(&tiles)
                .filter(|(&s, _)| unseen[s as usize] == want)
                .map(|(_, t)| t.clone())
                .take(24)
                .collect();
            if !part.is_empty() {
                contact_sheet(&part, [r, 2 * r], 8)
                    .save_png(&args.out.join(format!("grid-{name}.png")))?;
            }
        }
    }
    println!(
        "reconstructed {n} {} stimuli ({} conditions) into {}: grid {}, recon.npy + index.npy + conditions for eval-images",
        args.split,
        args.condition,
        args.out.display(),
        grid.display()
    );
    Ok(())
}
