//! `mindreader eval-images`: how good reconstructions are, in the field's metrics (the low- and
//! high-level columns of MindEye's and Brain-Diffuser's tables), each beside its chance level.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use mindreader::data::loader::average_repeats;
use mindreader::data::{DatasetFile, Split};
use mindreader::eval::image_metrics::{box_downsample, pixel_metrics, two_way_identification};
use mindreader::eval::probe::{
    accuracy, blurred, majority_rate, most_varying_columns, probe_features, Factor, Probe,
};
use mindreader::eval::{images, npy, retrieval};
use mindreader::models::clip::Clip;
use mindreader::ops::l2norm::cpu::l2_normalize;

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
    /// The generator's conditions of each reconstruction, `[N, F]` float32 `.npy` (what
    /// `reconstruct` writes as `conditions.npy`; the default beside a --recon directory when it
    /// is there), with `condition-table.npy` beside it: `[M, F]`, every stimulus' condition of
    /// the same kind. Adds each scene factor's `in_condition`: a probe fitted on the table's
    /// training stimuli (what the generator trained on), read off the reconstructions'
    /// conditions, so the report can say whether a factor was lost before the generator (by the
    /// mapper) or by it.
    #[arg(long)]
    pub conditions: Option<PathBuf>,
    /// Leave out each scene factor's `in_fmri` (a probe on the repeat-averaged fMRI, about 13 s
    /// at 2048 voxels). It does not depend on the reconstructions, so a caller scoring several
    /// sets of the same stimuli needs it once.
    #[arg(long)]
    pub no_fmri_probe: bool,
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

/// The conditions of the `n` reconstructions (`path`) and of the training stimuli (the rows of
/// `condition-table.npy` beside it), each row L2-normalised as the generator sees them:
/// `(training conditions, the reconstructions' conditions, F)`.
fn read_conditions(
    path: &Path,
    n: usize,
    stimuli: usize,
    train: &[usize],
) -> Result<(Vec<f32>, Vec<f32>, usize)> {
    let (cond, shape) = npy::read_f32(path)?;
    let [rows, f] = shape[..] else {
        anyhow::bail!("{}: shape {shape:?}, expected [{n}, F]", path.display());
    };
    anyhow::ensure!(
        rows == n && f > 0,
        "{}: shape {shape:?}, expected [{n}, F] (one condition per reconstruction)",
        path.display()
    );
    let table_path = path.with_file_name("condition-table.npy");
    let (table, table_shape) = npy::read_f32(&table_path).with_context(|| {
        format!(
            "the conditions {} need the table of every stimulus' condition beside them",
            path.display()
        )
    })?;
    anyhow::ensure!(
        table_shape[..] == [stimuli, f],
        "{}: shape {table_shape:?}, expected [{stimuli}, {f}] (every stimulus' condition, as wide as {})",
        table_path.display(),
        path.display()
    );
    let train_rows: Vec<f32> = train
        .iter()
        .flat_map(|&s| table[s * f..(s + 1) * f].iter().copied())
        .collect();
    let unit = |v: &[f32]| l2_normalize(v, f, 1e-12).0;
    Ok((unit(&train_rows), unit(&cond), f))
}

/// At most this many voxels feed the fMRI probe: its ridge solves a system as wide as its
/// input, and an NSD-sized 15,744 would take minutes.
const FMRI_PROBE_VOXELS: usize = 2048;

/// The repeat-averaged fMRI of the training stimuli and of the evaluated rows' stimuli, on the
/// `FMRI_PROBE_VOXELS` voxels whose averaged response varies most over the training stimuli
/// (trials are z-scored per session, so those are the most reliable ones): `(train, rows, V)`.
fn fmri_rows(
    file: &DatasetFile,
    train: &[usize],
    index: &[usize],
) -> Result<(Vec<f32>, Vec<f32>, usize)> {
    let (m, v) = (file.summary().stimuli, file.summary().voxels);
    let averaged = average_repeats(&file.fmri()?, v, file.trial_stimulus(), m);
    let keep = most_varying_columns(&averaged, v, train, FMRI_PROBE_VOXELS);
    let rows = |stimuli: &[usize]| -> Vec<f32> {
        let (averaged, keep) = (&averaged, &keep);
        stimuli
            .iter()
            .flat_map(|&s| keep.iter().map(move |&j| averaged[s * v + j]))
            .collect()
    };
    Ok((rows(train), rows(index), keep.len()))
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
    let conditions_path = args.conditions.clone().or_else(|| {
        let p = args.recon.join("conditions.npy");
        (args.recon.is_dir() && p.is_file()).then_some(p)
    });
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
    let clip = match &args.clip {
        Some(dir) => {
            let device = super::parse_device(&args.device)?;
            let clip = Clip::load(dir, &device)?;
            Some((clip, device))
        }
        None => None,
    };
    let embed = |imgs: &[Vec<u8>], ih: usize, iw: usize| -> Result<Option<Vec<f32>>> {
        let Some((clip, device)) = &clip else {
            return Ok(None);
        };
        super::embed::embed_images(clip, device, imgs.len(), args.batch, false, |range| {
            let pixels: Vec<u8> = imgs[range.clone()].iter().flatten().copied().collect();
            Ok((pixels, [range.len(), ih, iw, 3]))
        })
        .map(Some)
    };
    let er = embed(&recon_rgb8, h, w)?;
    let es = embed(&seen_rgb8, sh, sw)?;
    let d = clip.as_ref().map_or(0, |(c, _)| c.config.projection_dim);

    // The scene factors a probe reads off each picture (synthetic worlds only).
    let factors = match mindreader::eval::probe::scene_factors(&file)? {
        Some(f) => {
            let train: Vec<usize> = (0..file.summary().stimuli)
                .filter(|&s| file.split()[s] == Split::Train)
                .collect();
            let train_rgb8: Vec<Vec<u8>> = train
                .iter()
                .map(|&s| all[s * sh * sw * 3..(s + 1) * sh * sw * 3].to_vec())
                .collect();
            let et = embed(&train_rgb8, sh, sw)?;
            let conditions = match &conditions_path {
                Some(p) => Some(read_conditions(p, n, file.summary().stimuli, &train)?),
                None => None,
            };
            let fmri = match args.no_fmri_probe {
                true => None,
                false => Some(fmri_rows(&file, &train, &index)?),
            };
            Some(FactorReadout::new(
                f,
                &train,
                (&to01(&train_rgb8), [sh, sw]),
                et.as_deref().map(|e| (e, d)),
                [(&r01, er.as_deref()), (&s01, es.as_deref())],
                conditions.as_ref().map(|c| (&c.0[..], &c.1[..], c.2)),
                fmri.as_ref().map(|f| (&f.0[..], &f.1[..], f.2)),
                &index,
                [eh, ew],
                args.seed,
            )?)
        }
        None => None,
    };

    if factors.is_none() && args.conditions.is_some() {
        eprintln!(
            "note: --conditions is read only by the scene-factor probes, and {} has no scene ground truth (not a synthetic world)",
            args.data.display()
        );
    }

    // Every metric on a set of rows: all of them, then each part of a compositional split.
    let metrics_of = |rows: &[usize]| -> Result<serde_json::Value> {
        let k = rows.len();
        let pick = |x: &[f32], dim: usize| -> Vec<f32> {
            rows.iter()
                .flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied())
                .collect()
        };
        let dim = eh * ew * 3;
        let px = pixel_metrics(&pick(&r01, dim), &pick(&s01, dim), [k, eh, ew, 3])
            .map_err(anyhow::Error::msg)?;
        let mut m = serde_json::json!({
            "n": k,
            "resolution": [eh, ew],
            "pixel_correlation": {"value": px.pixel_correlation, "chance": 0.0},
            "ssim": {"value": px.ssim, "chance": null,
                     "how": "scikit-image structural_similarity, gaussian σ 1.5, population covariance, data_range 1, RGB channels averaged"},
            "two_way_pixels": {"value": px.two_way_pixels, "chance": 0.5},
        });
        if let (Some(er), Some(es)) = (&er, &es) {
            let (er, es) = (pick(er, d), pick(es, d));
            let r = retrieval(&er, &es, d, k.min(300), 30, args.seed)?;
            m["clip_two_way"] =
                serde_json::json!({"value": two_way_identification(&er, &es, d), "chance": 0.5});
            m["clip_cosine"] = serde_json::json!({"value": r.mean_cosine, "chance": null});
            m["clip_top1_retrieval"] = serde_json::json!({
                "value": r.image_from_brain, "chance": r.chance, "way": r.way, "batches": r.batches,
                "how": "the seen image among `way` seen images, from its reconstruction, by CLIP cosine"});
        }
        if let Some(f) = &factors {
            m["factors"] = f.json(rows);
        }
        Ok(m)
    };
    let every: Vec<usize> = (0..n).collect();
    let mut metrics = metrics_of(&every)?;
    if let Some(unseen) = file.unseen_combination()? {
        let (new, old): (Vec<usize>, Vec<usize>) = every.iter().partition(|&&i| unseen[index[i]]);
        if new.len() >= 2 && old.len() >= 2 {
            metrics["subsets"] = serde_json::json!({
                "ordinary": metrics_of(&old)?,
                "unseen_combination": metrics_of(&new)?,
                "how": "ordinary: every (shape, colour, side) combination shown also occurs in training; unseen_combination: the stimulus shows one that no training stimulus shows (synth --compositional)",
            });
        }
    }
    let text = serde_json::to_string_pretty(&metrics)?;
    println!("{text}");
    if let Some(out) = &args.out {
        mindreader::fsio::write_atomic(out, text.as_bytes())?;
    }
    Ok(())
}

/// The probes' answers on the reconstructions and on the seen images, per factor.
struct FactorReadout {
    factors: Vec<Factor>,
    /// Per factor: (on the reconstructions, on the seen images, the truth), one per row.
    answers: Vec<(Vec<usize>, Vec<usize>, Vec<usize>)>,
    /// Per factor, with a CLIP: a probe fitted on the training images' CLIP embeddings alone, on
    /// the seen test images' embeddings. What the CLIP space itself carries of each factor: the
    /// most a generator conditioned on it alone can be told.
    in_clip: Option<Vec<Vec<usize>>>,
    /// Per factor, with conditions: a probe fitted on the training stimuli's conditions, on the
    /// evaluated rows' conditions. What the generator was told of each factor.
    in_condition: Option<Vec<Vec<usize>>>,
    /// Per factor: a probe fitted on the training stimuli's repeat-averaged fMRI, on the
    /// evaluated rows' fMRI. What the brain data itself carries of each factor: the first link
    /// of the chain, the most any mapper can pass on.
    in_fmri: Option<Vec<Vec<usize>>>,
    train_labels: Vec<Vec<usize>>,
}

impl FactorReadout {
    /// Fits a probe per factor on the training stimuli's seen images (`train`, their pixels in
    /// [0, 1] and embeddings), then reads the factors off `pictures` ([reconstructions, seen],
    /// each with its embeddings) of the evaluated rows, row i showing stimulus `index[i]`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        factors: Vec<Factor>,
        train: &[usize],
        (train01, [th, tw]): (&[f32], [usize; 2]),
        train_emb: Option<(&[f32], usize)>,
        pictures: [(&[f32], Option<&[f32]>); 2],
        conditions: Option<(&[f32], &[f32], usize)>,
        fmri: Option<(&[f32], &[f32], usize)>,
        index: &[usize],
        [h, w]: [usize; 2],
        seed: u64,
    ) -> Result<FactorReadout> {
        let d_emb = train_emb.map_or(0, |(_, d)| d);
        let shape = [train.len(), th, tw];
        let (mut x, dx) = probe_features(train01, shape, train_emb);
        // and the blurred copies (with the sharp pictures' embeddings)
        x.extend(probe_features(&blurred(train01, shape), shape, train_emb).0);
        let train_labels: Vec<Vec<usize>> = factors
            .iter()
            .map(|f| train.iter().chain(train).map(|&s| f.labels[s]).collect())
            .collect();
        let heads: Vec<(&[usize], usize)> = train_labels
            .iter()
            .zip(&factors)
            .map(|(l, f)| (&l[..], f.classes.len()))
            .collect();
        let probes = Probe::fit(&x, dx, &heads, seed)?;
        // A probe per factor on one row per training stimulus of `table` (F wide), read off `rows`.
        let single: Vec<Vec<usize>> = factors
            .iter()
            .map(|f| train.iter().map(|&s| f.labels[s]).collect())
            .collect();
        let probe_on = |table: &[f32], f: usize, rows: &[f32]| -> Result<Vec<Vec<usize>>> {
            let heads: Vec<(&[usize], usize)> = single
                .iter()
                .zip(&factors)
                .map(|(l, fac)| (&l[..], fac.classes.len()))
                .collect();
            let probes = Probe::fit(table, f, &heads, seed)?;
            Ok(probes.iter().map(|p| p.predict(rows, f)).collect())
        };
        let in_clip = match (train_emb, pictures[1].1) {
            (Some((et, d)), Some(es)) => Some(probe_on(et, d, es)?),
            _ => None,
        };
        let in_condition = match conditions {
            Some((table, cond, f)) => Some(probe_on(table, f, cond)?),
            None => None,
        };
        let in_fmri = match fmri {
            Some((table, rows, v)) => Some(probe_on(table, v, rows)?),
            None => None,
        };
        let [recon, seen] = pictures
            .map(|(px, emb)| probe_features(px, [index.len(), h, w], emb.map(|e| (e, d_emb))).0);
        Ok(FactorReadout {
            answers: probes
                .iter()
                .zip(&factors)
                .map(|(p, f)| {
                    let truth = index.iter().map(|&s| f.labels[s]).collect();
                    (p.predict(&recon, dx), p.predict(&seen, dx), truth)
                })
                .collect(),
            factors,
            train_labels,
            in_clip,
            in_condition,
            in_fmri,
        })
    }

    fn json(&self, rows: &[usize]) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (k, ((f, (recon, seen, truth)), train)) in self
            .factors
            .iter()
            .zip(&self.answers)
            .zip(&self.train_labels)
            .enumerate()
        {
            let pick = |v: &[usize]| rows.iter().map(|&i| v[i]).collect::<Vec<_>>();
            let truth = pick(truth);
            let mut entry = serde_json::json!({
                "value": accuracy(&pick(recon), &truth),
                "seen": accuracy(&pick(seen), &truth),
                "chance": majority_rate(train, &truth, f.classes.len()),
                "classes": f.classes,
            });
            if let Some(c) = &self.in_clip {
                entry["in_clip"] = serde_json::json!(accuracy(&pick(&c[k]), &truth));
            }
            if let Some(c) = &self.in_condition {
                entry["in_condition"] = serde_json::json!(accuracy(&pick(&c[k]), &truth));
            }
            if let Some(c) = &self.in_fmri {
                entry["in_fmri"] = serde_json::json!(accuracy(&pick(&c[k]), &truth));
            }
            out.insert(f.name.into(), entry);
        }
        out.insert("how".into(), serde_json::json!(
            "accuracy of a linear probe (ridge to one-hot on the CLIP embedding, 8×8 colours, a map of each object colour and the main colour's outline moments) fitted on the training stimuli's seen images and blurred copies; `seen`: the same probe on the seen test images (its ceiling); `in_clip`: a probe fitted on the training images' CLIP embeddings alone, on the seen test images' embeddings (what the CLIP space carries of the factor, so the most a generator conditioned on it can be told); `in_condition`: a probe fitted on the training stimuli's conditions (unit rows, what the generator trained on), on the reconstructions' own conditions (what it was told); `in_fmri`: a probe fitted on the training stimuli's repeat-averaged fMRI (at most the 2048 voxels whose averaged response varies most), on the evaluated stimuli's (what the brain data carries, the most a mapper can pass on); chance: always the most frequent training class; the main object is the largest"));
        serde_json::Value::Object(out)
    }
}
