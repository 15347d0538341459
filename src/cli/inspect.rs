//! `mindreader inspect`: validate a prepared dataset, print its schema summary, and optionally
//! draw a contact sheet of stimuli with their captions.

use std::path::PathBuf;

use anyhow::{Context, Result};
use mindreader::data::sheet::{contact_sheet, Tile};
use mindreader::data::{AuxData, DatasetFile, Split};

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
}

pub fn run(args: InspectArgs) -> Result<()> {
    let file = DatasetFile::open(&args.file)?;
    let s = file.summary();
    let m = &s.meta;
    println!("{}", args.file.display());
    println!("  schema      version {} (this build reads ≤ {})", s.schema_version, mindreader::data::SCHEMA_VERSION);
    println!("  source      {}, subject {}, roi {}", m.source.name(), m.subject, m.roi);
    println!(
        "  fmri        f32 [{} trials, {} voxels] = {} unpadded + padding [{}, {}]; {} sessions; all values finite",
        s.trials, s.voxels, m.voxels_unpadded, m.padding[0], m.padding[1], s.sessions
    );
    let reps = if s.repeats.0 == s.repeats.1 { format!("{}", s.repeats.0) } else { format!("{}–{}", s.repeats.0, s.repeats.1) };
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
        println!("  targets     {name} f32 [{}, {dim}]{}", s.stimuli, if desc.is_empty() { String::new() } else { format!(": {desc}") });
    }
    if !s.scene.is_empty() {
        let list: Vec<String> = s.scene.iter().map(|(n, shape)| format!("{n} {shape:?}")).collect();
        println!("  scene       {}", list.join(", "));
    }
    let captions = file.captions()?;
    if let Some(first) = captions.first() {
        println!("  captions[0] {}", first.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(" | "));
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
                let side = if file.split()[i] == Split::Test { "test" } else { "train" };
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
        contact_sheet(&tiles, s.image_size, args.columns).save_png(out).with_context(|| format!("writing {}", out.display()))?;
        let note = if poor.is_some() { " (known-poor captions in red)" } else { "" };
        println!("wrote {}: stimuli {start}..{}{note}", out.display(), start + count);
    }
    Ok(())
}
