//! `mindreader inspect`: validate a prepared dataset, print its schema summary, and optionally
//! draw a contact sheet of stimuli with their captions.

use std::path::PathBuf;

use anyhow::{Context, Result};
use mindreader::data::sheet::{contact_sheet, Tile};
use mindreader::data::{AuxData, DatasetFile, Split};
use mindreader::ops::augment::{to_pil_u8, unit_planar, view_seed, MindReaderAugment};
use mindreader::{Device, Tensor};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The prepared dataset (HDF5).
    pub file: PathBuf,
    /// Write a PNG contact sheet of stimuli with their captions here.
    #[arg(long)]
    pub sheet: Option<PathBuf>,
    /// Stimuli on the sheet.
    #[arg(long, default_value_t = 12)]
    pub count: usize,
    /// First stimulus on the sheet.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// Tiles per row on the sheet.
    #[arg(long, default_value_t = 4)]
    pub columns: usize,
    /// Write a PNG of Mind Reader's training augmentation here: per stimulus (--start, --count)
    /// a row of the original and --views augmented views, each labelled with its draws. The
    /// views are those `screen-captions --augment-views` encodes with the same --augment-seed.
    #[arg(long)]
    pub augment_sheet: Option<PathBuf>,
    /// Augmented views per stimulus on --augment-sheet.
    #[arg(long, default_value_t = 4)]
    pub views: usize,
    #[arg(long, default_value_t = 42)]
    pub augment_seed: u64,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let file = DatasetFile::open(&args.file)?;
    let s = file.summary();
    let m = &s.meta;
    println!("{}", args.file.display());
    println!(
        "  schema      version {} (this build reads ≤ {})",
        s.schema_version,
        mindreader::data::SCHEMA_VERSION
    );
    println!(
        "  source      {}, subject {}, roi {}",
        m.source.name(),
        m.subject,
        m.roi
    );
    println!(
        "  fmri        f32 [{} trials, {} voxels] = {} unpadded + padding [{}, {}]; {} sessions; all values finite",
        s.trials, s.voxels, m.voxels_unpadded, m.padding[0], m.padding[1], s.sessions
    );
    let reps = if s.repeats.0 == s.repeats.1 {
        format!("{}", s.repeats.0)
    } else {
        format!("{}–{}", s.repeats.0, s.repeats.1)
    };
    println!(
        "  stimuli     {} images u8 [{}, {}, {}, 3]; {} captions each; {reps} trials per stimulus",
        s.stimuli, s.stimuli, s.image_size[0], s.image_size[1], s.captions_per_stimulus
    );
    println!(
        "  split       train {} stimuli / {} trials, test {} stimuli / {} trials",
        s.train_stimuli, s.train_trials, s.test_stimuli, s.test_trials
    );
    if s.targets.is_empty() {
        println!("  targets     none");
    }
    for (name, dim) in &s.targets {
        let desc = file.target_description(name)?;
        println!(
            "  targets     {name} f32 [{}, {dim}]{}",
            s.stimuli,
            if desc.is_empty() {
                String::new()
            } else {
                format!(": {desc}")
            }
        );
    }
    for (name, views, dim) in &s.augmented {
        println!("  augmented   {name} f32 [{views} views, {}, {dim}] (train-mapper --target {name} --augmented)", s.stimuli);
    }
    if !s.scene.is_empty() {
        let list: Vec<String> = s
            .scene
            .iter()
            .map(|(n, shape)| format!("{n} {shape:?}"))
            .collect();
        println!("  scene       {}", list.join(", "));
    }
    let captions = file.captions()?;
    if let Some(first) = captions.first() {
        println!(
            "  captions[0] {}",
            first
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }

    if let Some(out) = &args.sheet {
        let start = args.start.min(s.stimuli);
        let count = args.count.min(s.stimuli - start);
        let images = file.images_range(start, count)?;
        let poor = if s.scene.iter().any(|(n, _)| n == "caption_ok") {
            match file.scene_array("caption_ok")?.data {
                AuxData::U8(v) => Some(v),
                AuxData::F32(_) => None,
            }
        } else {
            None
        };
        let [h, w] = s.image_size;
        let c = s.captions_per_stimulus;
        let tiles: Vec<Tile> = (0..count)
            .map(|k| {
                let i = start + k;
                let side = if file.split()[i] == Split::Test {
                    "test"
                } else {
                    "train"
                };
                Tile {
                    image: &images[k * h * w * 3..][..h * w * 3],
                    label: format!("#{i} {side}"),
                    captions: captions[i]
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| !t.is_empty())
                        .map(|(j, t)| (t.clone(), poor.as_ref().is_some_and(|p| p[i * c + j] == 0)))
                        .collect(),
                }
            })
            .collect();
        contact_sheet(&tiles, s.image_size, args.columns)
            .save_png(out)
            .with_context(|| format!("writing {}", out.display()))?;
        let note = if poor.is_some() {
            " (known-poor captions in red)"
        } else {
            ""
        };
        println!(
            "wrote {}: stimuli {start}..{}{note}",
            out.display(),
            start + count
        );
    }
    if let Some(out) = &args.augment_sheet {
        augment_sheet(
            &file,
            out,
            args.start,
            args.count,
            args.views,
            args.augment_seed,
        )?;
    }
    Ok(())
}

/// Rows of (original, view 0, …, view K−1) for stimuli `start ..`, augmented on the CPU.
fn augment_sheet(
    file: &DatasetFile,
    out: &std::path::Path,
    start: usize,
    count: usize,
    views: usize,
    seed: u64,
) -> Result<()> {
    anyhow::ensure!(views >= 1, "--views must be at least 1");
    let s = file.summary();
    let [h, w] = s.image_size;
    let start = start.min(s.stimuli);
    let count = count.min(s.stimuli - start);
    anyhow::ensure!(
        count > 0,
        "no stimuli from --start {start} ({} in the file)",
        s.stimuli
    );
    let images = file.images_range(start, count)?;
    let x = Tensor::from_vec(
        unit_planar(&images, [count, h, w])?,
        &[count, 3, h, w],
        &Device::Cpu,
    )?;
    let aug = MindReaderAugment::default();
    // view_images[k]: view k of every stimulus, [count, h, w, 3]; labels[k][i] its draws.
    let mut view_images = Vec::with_capacity(views);
    let mut labels = Vec::with_capacity(views);
    for k in 0..views {
        let vs = view_seed(seed, k);
        let draws: Vec<_> = (0..count)
            .map(|i| aug.sample(vs, start + i, h, w))
            .collect();
        view_images.push(to_pil_u8(
            &aug.apply_params(&x, &draws)?.to_vec_f32()?,
            [count, h, w],
        )?);
        labels.push(draws.iter().map(|d| d.describe(h, w)).collect::<Vec<_>>());
    }
    let px = h * w * 3;
    let mut tiles = Vec::with_capacity(count * (views + 1));
    for i in 0..count {
        tiles.push(Tile {
            image: &images[i * px..][..px],
            label: format!("#{} original", start + i),
            captions: Vec::new(),
        });
        for k in 0..views {
            tiles.push(Tile {
                image: &view_images[k][i * px..][..px],
                label: format!("view {k}"),
                captions: vec![(labels[k][i].clone(), false)],
            });
        }
    }
    contact_sheet(&tiles, s.image_size, views + 1)
        .save_png(out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {}: stimuli {start}..{} with {views} augmented views each (seed {seed})",
        out.display(),
        start + count
    );
    Ok(())
}
