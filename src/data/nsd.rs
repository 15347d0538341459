//! NSD ingestion: the Natural Scenes Dataset's released files → one prepared dataset
//! (`docs/dataset.md`), as `mindreader prepare-nsd` does. `docs/nsd.md` lists the files and where
//! they go.
//!
//! What is read, and how its axes line up:
//!
//! - betas `betas_sessionSS.hdf5`, dataset `betas`: int16, percent signal change × 300. MATLAB
//!   wrote it as `[X, Y, Z, trials]`; HDF5 (and h5py, and this reader) see the axes reversed,
//!   `[trials, Z, Y, X]` in C order.
//! - the ROI mask `roi/<roi>.nii.gz` (NIfTI-1): shape `(X, Y, Z)` with x varying fastest on disk
//!   (nibabel's view). It must equal the betas' spatial axes reversed; anything else is refused
//!   rather than guessed. Voxel v of a prepared row is the v-th mask voxel in C order over the
//!   betas' own axes `(z, y, x)`, i.e. `betas[:, mask.T > 0]` in numpy.
//! - the design `nsd_expdesign.mat`: `masterordering` (trial → 1-based index into the subject's
//!   images), `subjectim` (`[8, 10000]`, 1-based 73k ids), `sharedix` (1-based 73k ids of the
//!   shared 1,000). Trial t of session s (both from 1) is design entry `(s − 1)·n + t` where n is
//!   the trials per session (750 in NSD).
//! - `nsd_stimuli.hdf5` `imgBrick` `[73000, 425, 425, 3]` uint8, resized by area averaging.
//! - `nsd_stim_info_merged.csv` (nsdId → cocoId, cocoSplit) and COCO's
//!   `captions_{train,val}2017.json`.
//!
//! Memory: one session's betas are read in trial blocks of about 64 MB and masked at once, so
//! neither the 4-D series nor one whole session's volume is ever held; the masked `[T, V]` matrix
//! (what the prepared file stores) is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use ndarray::ArrayD;

use crate::data::dataset::{rows, Contents, Meta, Source, Split};
use crate::error::{Error, Result};

/// Bytes of int16 betas read per block.
const BLOCK_BYTES: usize = 64 << 20;

/// NSD stores betas as percent signal change × 300 in int16.
const BETA_SCALE: f64 = 300.0;

/// Zero columns added around the masked voxels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Explicit `[before, after]` (Mind Reader: `[10, 10]`).
    Explicit([usize; 2]),
    /// Up to the next multiple of k, split evenly (the extra column after): 15724 with k = 128
    /// gives 15744 = `[10, 10]`, Mind Reader's width.
    Multiple(usize),
}

impl Padding {
    pub fn resolve(self, voxels: usize) -> [usize; 2] {
        match self {
            Padding::Explicit(p) => p,
            Padding::Multiple(k) => {
                let k = k.max(1);
                let extra = (k - voxels % k) % k;
                [extra / 2, extra - extra / 2]
            }
        }
    }
}

/// Everything `prepare` needs: where NSD is and what to make of it.
#[derive(Clone, Debug)]
pub struct NsdConfig {
    /// The directory holding `nsddata/`, `nsddata_betas/` and `nsddata_stimuli/`.
    pub root: PathBuf,
    /// 1–8.
    pub subject: usize,
    /// The mask's file stem under `roi/` (`nsdgeneral`).
    pub roi: String,
    /// 1-based sessions to read, in order; `None` = every session found (1 to the last present,
    /// with no gaps).
    pub sessions: Option<Vec<usize>>,
    /// Z-score each voxel over each session's trials (Mind Reader's `nsdgeneral_zscored`).
    pub zscore: bool,
    /// One row per stimulus, the mean of its trials (after z-scoring), instead of one per trial.
    pub average_repeats: bool,
    pub padding: Padding,
    /// Output image side in pixels (NSD's are 425).
    pub image_size: usize,
    /// Where `captions_train2017.json` and `captions_val2017.json` are
    /// (default `<root>/coco/annotations`).
    pub coco_dir: Option<PathBuf>,
}

impl NsdConfig {
    pub fn new(root: impl Into<PathBuf>, subject: usize) -> NsdConfig {
        NsdConfig {
            root: root.into(),
            subject,
            roi: "nsdgeneral".into(),
            sessions: None,
            zscore: true,
            average_repeats: false,
            padding: Padding::Explicit([0, 0]),
            image_size: 256,
            coco_dir: None,
        }
    }

    fn subj(&self) -> String {
        format!("subj{:02}", self.subject)
    }
    pub fn betas_dir(&self) -> PathBuf {
        self.root
            .join("nsddata_betas/ppdata")
            .join(self.subj())
            .join("func1pt8mm/betas_fithrf_GLMdenoise_RR")
    }
    pub fn session_path(&self, session: usize) -> PathBuf {
        self.betas_dir()
            .join(format!("betas_session{session:02}.hdf5"))
    }
    pub fn mask_path(&self) -> PathBuf {
        self.root
            .join("nsddata/ppdata")
            .join(self.subj())
            .join("func1pt8mm/roi")
            .join(format!("{}.nii.gz", self.roi))
    }
    pub fn design_path(&self) -> PathBuf {
        self.root.join("nsddata/experiments/nsd/nsd_expdesign.mat")
    }
    pub fn stim_info_path(&self) -> PathBuf {
        self.root
            .join("nsddata/experiments/nsd/nsd_stim_info_merged.csv")
    }
    pub fn stimuli_path(&self) -> PathBuf {
        self.root
            .join("nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")
    }
    pub fn captions_path(&self, coco_split: &str) -> PathBuf {
        let dir = self
            .coco_dir
            .clone()
            .unwrap_or_else(|| self.root.join("coco/annotations"));
        dir.join(format!("captions_{coco_split}.json"))
    }

    /// The sessions to read: the configured list, or 1..=the last `betas_sessionSS.hdf5` found.
    pub fn resolve_sessions(&self) -> Result<Vec<usize>> {
        if let Some(s) = &self.sessions {
            if s.is_empty() || s.contains(&0) {
                return Err(Error::Invalid(format!(
                    "sessions {s:?}: give at least one, numbered from 1"
                )));
            }
            return Ok(s.clone());
        }
        let dir = self.betas_dir();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::file(&dir, format!("reading the betas directory: {e}")))?;
        let last = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("betas_session")?
                    .strip_suffix(".hdf5")?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .ok_or_else(|| {
                Error::file(
                    &dir,
                    "no betas_sessionSS.hdf5 files (expected betas_session01.hdf5 onwards)",
                )
            })?;
        Ok((1..=last).collect())
    }
}

/// The ROI mask: the betas' spatial shape it expects and the voxels inside, as offsets into one
/// trial's `[Z, Y, X]` C-order volume, ascending.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    /// `[Z, Y, X]`: the NIfTI `(X, Y, Z)` reversed, as the betas store it.
    pub betas_shape: [usize; 3],
    pub inside: Vec<usize>,
}

/// Reads a NIfTI mask (`.nii` or `.nii.gz`); a voxel is inside when its value is > 0.5 (NSD: 1
/// inside, 0 outside the ROI, −1 outside the brain).
pub fn read_mask(path: &Path) -> Result<Mask> {
    use nifti::{NiftiObject, NiftiVolume, RandomAccessNiftiVolume};
    if !path.exists() {
        return Err(Error::file(
            path,
            "missing: expected the ROI mask (NIfTI, (X, Y, Z), 1 inside the ROI)",
        ));
    }
    let obj = nifti::ReaderOptions::new()
        .read_file(path)
        .map_err(|e| Error::file(path, format!("not a readable NIfTI file: {e}")))?;
    let vol = obj.volume();
    let dim = vol.dim();
    // Trailing singleton axes (a 4-D file with one volume) are harmless.
    if dim.len() < 3 || dim[3..].iter().any(|&d| d != 1) {
        return Err(Error::file(
            path,
            format!("mask has shape {dim:?}; expected a 3-D volume (X, Y, Z)"),
        ));
    }
    let (nx, ny, nz) = (dim[0] as usize, dim[1] as usize, dim[2] as usize);
    let mut inside = Vec::new();
    let mut coords = vec![0u16; dim.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                coords[..3].copy_from_slice(&[x as u16, y as u16, z as u16]);
                let v = vol
                    .get_f64(&coords)
                    .map_err(|e| Error::file(path, format!("voxel ({x}, {y}, {z}): {e}")))?;
                if v > 0.5 {
                    inside.push((z * ny + y) * nx + x);
                }
            }
        }
    }
    if inside.is_empty() {
        return Err(Error::file(
            path,
            "the mask selects no voxels (expected some with value 1)",
        ));
    }
    Ok(Mask {
        betas_shape: [nz, ny, nx],
        inside,
    })
}

/// The parts of `nsd_expdesign.mat` that map trials to images, converted to 0-based.
#[derive(Clone, Debug, PartialEq)]
pub struct Design {
    /// Trial (0-based, over all sessions) → 0-based index into the subject's image list.
    pub masterordering: Vec<usize>,
    /// `subjectim[subject − 1][k]`: 0-based 73k id of the subject's k-th image.
    pub subjectim: Vec<Vec<usize>>,
    /// 0-based 73k ids of the shared images.
    pub sharedix: BTreeSet<usize>,
}

pub fn read_design(path: &Path) -> Result<Design> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::file(
            path,
            format!("cannot open the experimental design (nsd_expdesign.mat): {e}"),
        )
    })?;
    let mat = matfile::MatFile::parse(std::io::BufReader::new(file)).map_err(|e| Error::file(path, format!("not a readable MATLAB v5/v7 .mat file ({e}); v7.3 files are HDF5 and not read here")))?;
    // (rows, cols, column-major values) of a numeric variable holding 1-based indices.
    let get = |name: &str| -> Result<(usize, usize, Vec<usize>)> {
        let a = mat
            .find_by_name(name)
            .ok_or_else(|| Error::file(path, format!("variable `{name}` is missing")))?;
        let size = a.size();
        if size.len() != 2 {
            return Err(Error::file(
                path,
                format!("variable `{name}` has shape {size:?}; expected a matrix"),
            ));
        }
        // MATLAB saves indices as double; accept any real numeric class.
        let vals: Vec<f64> = match a.data() {
            matfile::NumericData::Double { real, .. } => real.clone(),
            matfile::NumericData::Single { real, .. } => real.iter().map(|&x| x as f64).collect(),
            matfile::NumericData::Int8 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            matfile::NumericData::UInt8 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            matfile::NumericData::Int16 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            matfile::NumericData::UInt16 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            matfile::NumericData::Int32 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            matfile::NumericData::UInt32 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            matfile::NumericData::Int64 { real, .. } => real.iter().map(|&x| x as f64).collect(),
            matfile::NumericData::UInt64 { real, .. } => real.iter().map(|&x| x as f64).collect(),
        };
        let idx = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if v >= 1.0 && v.fract() == 0.0 {
                    Ok(v as usize - 1)
                } else {
                    Err(Error::file(
                        path,
                        format!("variable `{name}` entry {i} is {v}; expected a 1-based index"),
                    ))
                }
            })
            .collect::<Result<Vec<usize>>>()?;
        Ok((size[0], size[1], idx))
    };
    let (_, _, masterordering) = get("masterordering")?;
    let (subjects, per_subject, im) = get("subjectim")?;
    let subjectim = (0..subjects)
        .map(|s| (0..per_subject).map(|k| im[s + subjects * k]).collect())
        .collect();
    let (_, _, shared) = get("sharedix")?;
    Ok(Design {
        masterordering,
        subjectim,
        sharedix: shared.into_iter().collect(),
    })
}

/// One session's masked betas: `[trials, V]` in f32 (divided by 300, z-scored per voxel when asked).
pub fn read_session(path: &Path, mask: &Mask, zscore: bool) -> Result<(Vec<f32>, usize)> {
    if !path.exists() {
        return Err(Error::file(path, "missing: expected this session's betas (HDF5 dataset `betas`, [trials, Z, Y, X] int16)"));
    }
    let file = hdf5::File::open(path)
        .map_err(|e| Error::file(path, format!("not a readable HDF5 file: {e}")))?;
    let ds = file
        .dataset("betas")
        .map_err(|e| Error::dataset(path, "betas", format!("missing: {e}")))?;
    let shape = ds.shape();
    let [nz, ny, nx] = mask.betas_shape;
    if shape.len() != 4 || shape[1..] != mask.betas_shape {
        let hint = if shape.len() == 4 && shape[1..] == [nx, ny, nz] {
            " (the betas look stored as [trials, X, Y, Z]; NSD's are [trials, Z, Y, X] as h5py shows them)"
        } else {
            ""
        };
        return Err(Error::dataset(
            path,
            "betas",
            format!("shape {shape:?} does not match the mask: the mask is (X, Y, Z) = ({nx}, {ny}, {nz}), so the betas must be [trials, {nz}, {ny}, {nx}]{hint}"),
        ));
    }
    let (trials, volume) = (shape[0], nz * ny * nx);
    let v = mask.inside.len();
    let mut out = vec![0f32; trials * v];
    let step = (BLOCK_BYTES / (volume * 2).max(1)).max(1);
    let mut t0 = 0;
    while t0 < trials {
        let t1 = (t0 + step).min(trials);
        let block: ArrayD<i16> = ds.read_slice(rows(t0..t1, 4)).map_err(|e| {
            Error::dataset(
                path,
                "betas",
                format!("reading trials {t0}..{t1} as int16: {e}"),
            )
        })?;
        let block = block.as_standard_layout();
        let flat = block
            .as_slice()
            .ok_or_else(|| Error::dataset(path, "betas", "block is not contiguous"))?;
        for t in t0..t1 {
            let vol = &flat[(t - t0) * volume..(t - t0 + 1) * volume];
            let row = &mut out[t * v..(t + 1) * v];
            for (o, &i) in row.iter_mut().zip(&mask.inside) {
                *o = (vol[i] as f64 / BETA_SCALE) as f32;
            }
        }
        t0 = t1;
    }
    if zscore {
        zscore_columns(&mut out, trials, v);
    }
    Ok((out, trials))
}

/// Z-scores each column of a `[rows, cols]` matrix in place (population std, ddof 0, in f64). A
/// column with zero variance (a voxel NSD marks invalid is all 0 in a session) becomes 0 instead
/// of NaN.
pub fn zscore_columns(x: &mut [f32], rows: usize, cols: usize) {
    let mut mean = vec![0f64; cols];
    for r in 0..rows {
        for (m, &v) in mean.iter_mut().zip(&x[r * cols..(r + 1) * cols]) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows.max(1) as f64);
    let mut var = vec![0f64; cols];
    for r in 0..rows {
        for ((s, &v), &m) in var.iter_mut().zip(&x[r * cols..(r + 1) * cols]).zip(&mean) {
            *s += (v as f64 - m).powi(2);
        }
    }
    let sd: Vec<f64> = var
        .iter()
        .map(|s| (s / rows.max(1) as f64).sqrt())
        .collect();
    for r in 0..rows {
        for ((v, &m), &s) in x[r * cols..(r + 1) * cols].iter_mut().zip(&mean).zip(&sd) {
            *v = if s > 0.0 {
                ((*v as f64 - m) / s) as f32
            } else {
                0.0
            };
        }
    }
}

/// `nsd_stim_info_merged.csv`: 0-based nsdId → (cocoId, COCO split such as `train2017`).
pub fn read_stim_info(path: &Path) -> Result<HashMap<usize, (u64, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::file(
            path,
            format!("cannot read the stimulus info CSV (nsd_stim_info_merged.csv): {e}"),
        )
    })?;
    let mut lines = text.lines();
    let header = split_csv_line(lines.next().unwrap_or(""));
    let col = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            Error::file(
                path,
                format!("no `{name}` column (expected nsdId, cocoId, cocoSplit)"),
            )
        })
    };
    let (c_nsd, c_coco, c_split) = (col("nsdId")?, col("cocoId")?, col("cocoSplit")?);
    let mut map = HashMap::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f = split_csv_line(line);
        let bad = |what: &str| Error::file(path, format!("line {}: {what}", n + 2));
        let field = |c: usize| f.get(c).ok_or_else(|| bad("too few fields"));
        let nsd: usize = field(c_nsd)?
            .trim()
            .parse()
            .map_err(|_| bad("nsdId is not an integer"))?;
        let coco: u64 = field(c_coco)?
            .trim()
            .parse()
            .map_err(|_| bad("cocoId is not an integer"))?;
        map.insert(nsd, (coco, field(c_split)?.trim().to_owned()));
    }
    Ok(map)
}

/// Splits one CSV line (RFC 4180 quoting: `"a, b"` is one field, `""` inside quotes is a quote).
/// NSD's `cropBox` column holds quoted tuples with commas.
fn split_csv_line(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// COCO captions of the wanted images from one `captions_*.json`, each image's in annotation-id
/// order (the order COCO's ids give is stable across copies of the file).
pub fn read_coco_captions(
    path: &Path,
    wanted: &BTreeSet<u64>,
) -> Result<HashMap<u64, Vec<String>>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::file(path, format!("cannot open the COCO captions: {e}")))?;
    let json: serde_json::Value = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
    let anns = json
        .get("annotations")
        .and_then(|a| a.as_array())
        .ok_or_else(|| {
            Error::file(
                path,
                "no `annotations` array (expected a COCO captions file)",
            )
        })?;
    let mut found: HashMap<u64, Vec<(u64, String)>> = HashMap::new();
    for (i, a) in anns.iter().enumerate() {
        let image = a
            .get("image_id")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| Error::file(path, format!("annotation {i}: no integer `image_id`")))?;
        if !wanted.contains(&image) {
            continue;
        }
        let id = a
            .get("id")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| Error::file(path, format!("annotation {i}: no integer `id`")))?;
        let caption = a
            .get("caption")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::file(path, format!("annotation {i}: no string `caption`")))?;
        found
            .entry(image)
            .or_default()
            .push((id, caption.trim().to_owned()));
    }
    Ok(found
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            (k, v.into_iter().map(|(_, c)| c).collect())
        })
        .collect())
}

/// Area-averaging resize of an `[h, w, 3]` u8 image to `[size, size, 3]`: each output pixel is
/// the mean of the input area it covers, partial pixels weighted by overlap (a box filter as wide
/// as the scale, so 425 → 256 does not alias). Separable: rows, then columns, in f64; rounded half
/// up.
pub fn resize_area(img: &[u8], h: usize, w: usize, size: usize) -> Vec<u8> {
    let wx = area_weights(w, size);
    let wy = area_weights(h, size);
    // Horizontal pass: [h, size, 3].
    let mut tmp = vec![0f64; h * size * 3];
    for y in 0..h {
        for (j, taps) in wx.iter().enumerate() {
            for &(i, wt) in taps {
                for c in 0..3 {
                    tmp[(y * size + j) * 3 + c] += wt * img[(y * w + i) * 3 + c] as f64;
                }
            }
        }
    }
    let mut out = vec![0u8; size * size * 3];
    for (j, taps) in wy.iter().enumerate() {
        for x in 0..size {
            for c in 0..3 {
                let v: f64 = taps
                    .iter()
                    .map(|&(i, wt)| wt * tmp[(i * size + x) * 3 + c])
                    .sum();
                out[(j * size + x) * 3 + c] = (v + 0.5).floor().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// For each of `m` outputs over `n` inputs: (input, weight) pairs; output j covers
/// `[j·n/m, (j+1)·n/m)` and the weights (overlaps / width) sum to 1.
fn area_weights(n: usize, m: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = n as f64 / m as f64;
    (0..m)
        .map(|j| {
            let (a, b) = (j as f64 * scale, (j + 1) as f64 * scale);
            (a.floor() as usize..(b.ceil() as usize).min(n))
                .filter_map(|i| {
                    let overlap = b.min(i as f64 + 1.0) - a.max(i as f64);
                    (overlap > 0.0).then_some((i, overlap / scale))
                })
                .collect()
        })
        .collect()
}

/// Reads everything and returns the prepared contents (write them with
/// `data::dataset::write_with_progress`). `progress` counts sessions, then stimuli.
pub fn prepare(cfg: &NsdConfig, progress: &ProgressBar) -> Result<Contents> {
    if !(1..=8).contains(&cfg.subject) {
        return Err(Error::Invalid(format!(
            "subject {} does not exist: NSD has subjects 1 to 8",
            cfg.subject
        )));
    }
    if cfg.image_size == 0 {
        return Err(Error::Invalid("image size must be at least 1 pixel".into()));
    }
    let sessions = cfg.resolve_sessions()?;
    // Every requested session must be there before hours of reading start.
    if let Some(s) = sessions.iter().find(|&&s| !cfg.session_path(s).exists()) {
        return Err(Error::file(
            cfg.session_path(*s),
            format!(
                "missing: session {s} of {} was requested (sessions {sessions:?})",
                cfg.subj()
            ),
        ));
    }
    let mask = read_mask(&cfg.mask_path())?;
    let design_path = cfg.design_path();
    let design = read_design(&design_path)?;
    let images_of_subject = design.subjectim.get(cfg.subject - 1).ok_or_else(|| {
        Error::file(
            &design_path,
            format!(
                "`subjectim` has {} rows; subject {} has none",
                design.subjectim.len(),
                cfg.subject
            ),
        )
    })?;

    // Sessions: masked rows and each trial's 0-based 73k id.
    progress.set_length(sessions.len() as u64);
    progress.set_message("sessions");
    let v = mask.inside.len();
    let pad = cfg.padding.resolve(v);
    let width = v + pad[0] + pad[1];
    // Padded rows are built as sessions arrive, so the [T, V] matrix exists once, not twice.
    let (mut fmri, mut trial_73k, mut trial_session) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_session = None;
    for &s in &sessions {
        let path = cfg.session_path(s);
        let (x, n) = read_session(&path, &mask, cfg.zscore)?;
        let expected = *per_session.get_or_insert(n);
        if n != expected {
            return Err(Error::dataset(
                &path,
                "betas",
                format!("{n} trials; earlier sessions have {expected}"),
            ));
        }
        for t in 0..n {
            let g = (s - 1) * n + t;
            let k = *design.masterordering.get(g).ok_or_else(|| {
                Error::file(&design_path, format!("session {s} trial {} is design trial {}, but `masterordering` has {} entries", t + 1, g + 1, design.masterordering.len()))
            })?;
            let id = *images_of_subject.get(k).ok_or_else(|| {
                Error::file(&design_path, format!("`masterordering` entry {} is {}, out of range for the {} images of subject {} in `subjectim`", g + 1, k + 1, images_of_subject.len(), cfg.subject))
            })?;
            trial_73k.push(id);
            trial_session.push(s as u32);
        }
        fmri.reserve(n * width);
        for row in x.chunks(v) {
            fmri.extend(std::iter::repeat(0.0).take(pad[0]));
            fmri.extend_from_slice(row);
            fmri.extend(std::iter::repeat(0.0).take(pad[1]));
        }
        progress.inc(1);
    }

    // Stimuli: every image the selected trials showed, by ascending 73k id.
    let ids: Vec<usize> = trial_73k
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: HashMap<usize, u32> = ids
        .iter()
        .enumerate()
        .map(|(m, &id)| (id, m as u32))
        .collect();
    let mut trial_stimulus: Vec<u32> = trial_73k.iter().map(|id| index[id]).collect();
    if cfg.average_repeats {
        let (avg, first_session) =
            average_rows(&fmri, width, &trial_stimulus, &trial_session, ids.len());
        fmri = avg;
        trial_session = first_session;
        trial_stimulus = (0..ids.len() as u32).collect();
    }
    let split = ids
        .iter()
        .map(|id| {
            if design.sharedix.contains(id) {
                Split::Test
            } else {
                Split::Train
            }
        })
        .collect();

    let captions = read_captions(cfg, &ids)?;
    let images = read_images(cfg, &ids, progress)?;

    Ok(Contents {
        meta: Meta {
            subject: cfg.subj(),
            source: Source::Nsd,
            voxels_unpadded: v,
            padding: pad,
            roi: cfg.roi.clone(),
        },
        voxels: width,
        fmri,
        trial_stimulus,
        trial_session,
        image_size: [cfg.image_size, cfg.image_size],
        images,
        captions,
        split,
        stimulus_id: ids.iter().map(|&id| id as u32).collect(),
        targets: Vec::new(),
        scene: Vec::new(),
    })
}

/// One row per stimulus, the mean of its trials' rows, and the session of its first trial.
fn average_rows(
    x: &[f32],
    v: usize,
    trial_stimulus: &[u32],
    trial_session: &[u32],
    stimuli: usize,
) -> (Vec<f32>, Vec<u32>) {
    let mut sum = vec![0f64; stimuli * v];
    let mut count = vec![0usize; stimuli];
    let mut first = vec![None; stimuli];
    for (t, &m) in trial_stimulus.iter().enumerate() {
        let m = m as usize;
        for (s, &a) in sum[m * v..(m + 1) * v]
            .iter_mut()
            .zip(&x[t * v..(t + 1) * v])
        {
            *s += a as f64;
        }
        count[m] += 1;
        first[m].get_or_insert(trial_session[t]);
    }
    let avg = sum
        .chunks(v.max(1))
        .zip(&count)
        .flat_map(|(row, &c)| row.iter().map(move |&s| (s / c.max(1) as f64) as f32))
        .collect();
    (avg, first.into_iter().map(|s| s.unwrap_or(0)).collect())
}

/// Captions for each stimulus (73k ids), padded with "" to the most any has.
fn read_captions(cfg: &NsdConfig, ids: &[usize]) -> Result<Vec<Vec<String>>> {
    let info_path = cfg.stim_info_path();
    let info = read_stim_info(&info_path)?;
    let mut by_split: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for id in ids {
        let (coco, split) = info.get(id).ok_or_else(|| {
            Error::file(
                &info_path,
                format!(
                    "no row for nsdId {id} (a stimulus subject {} saw)",
                    cfg.subject
                ),
            )
        })?;
        by_split.entry(split.as_str()).or_default().insert(*coco);
    }
    let mut found: HashMap<(&str, u64), Vec<String>> = HashMap::new();
    for (split, wanted) in &by_split {
        for (coco, caps) in read_coco_captions(&cfg.captions_path(split), wanted)? {
            found.insert((split, coco), caps);
        }
    }
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        let (coco, split) = &info[id];
        let caps = found
            .get(&(split.as_str(), *coco))
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                Error::file(
                    cfg.captions_path(split),
                    format!(
                        "no captions for cocoId {coco} (nsdId {id}, a stimulus subject {} saw)",
                        cfg.subject
                    ),
                )
            })?;
        rows.push(caps.clone());
    }
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    rows.iter_mut().for_each(|r| r.resize(width, String::new()));
    Ok(rows)
}

/// The stimuli (73k ids) from `imgBrick`, one read and one resize each.
fn read_images(cfg: &NsdConfig, ids: &[usize], progress: &ProgressBar) -> Result<Vec<u8>> {
    let path = cfg.stimuli_path();
    if !path.exists() {
        return Err(Error::file(&path, "missing: expected the NSD stimuli (HDF5 dataset `imgBrick`, [73000, 425, 425, 3] uint8)"));
    }
    let file = hdf5::File::open(&path)
        .map_err(|e| Error::file(&path, format!("not a readable HDF5 file: {e}")))?;
    let ds = file
        .dataset("imgBrick")
        .map_err(|e| Error::dataset(&path, "imgBrick", format!("missing: {e}")))?;
    let shape = ds.shape();
    if shape.len() != 4 || shape[3] != 3 {
        return Err(Error::dataset(
            &path,
            "imgBrick",
            format!("shape {shape:?}; expected [images, height, width, 3]"),
        ));
    }
    let (h, w) = (shape[1], shape[2]);
    let size = cfg.image_size;
    progress.set_position(0);
    progress.set_length(ids.len() as u64);
    progress.set_message("images");
    let mut out = Vec::with_capacity(ids.len() * size * size * 3);
    for &id in ids {
        if id >= shape[0] {
            return Err(Error::dataset(
                &path,
                "imgBrick",
                format!(
                    "image {id} (0-based) is out of range for {} images",
                    shape[0]
                ),
            ));
        }
        let img: ArrayD<u8> = ds.read_slice(rows(id..id + 1, 4)).map_err(|e| {
            Error::dataset(
                &path,
                "imgBrick",
                format!("reading image {id} as uint8: {e}"),
            )
        })?;
        let img = img.as_standard_layout();
        let flat = img
            .as_slice()
            .ok_or_else(|| Error::dataset(&path, "imgBrick", "image is not contiguous"))?;
        out.extend(resize_area(flat, h, w, size));
        progress.inc(1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_to_a_multiple_matches_mind_reader() {
        assert_eq!(Padding::Multiple(128).resolve(15724), [10, 10]);
        assert_eq!(Padding::Multiple(16).resolve(13), [1, 2]);
        assert_eq!(Padding::Multiple(16).resolve(32), [0, 0]);
        assert_eq!(Padding::Explicit([3, 4]).resolve(7), [3, 4]);
    }

    #[test]
    fn area_resize_averages_blocks_and_keeps_flat_images_flat() {
        // 4×4 → 2×2 averages 2×2 blocks exactly.
        let img: Vec<u8> = (0..16u8).flat_map(|i| [i * 10, 0, 255]).collect();
        let out = resize_area(&img, 4, 4, 2);
        let r: Vec<u8> = out.chunks(3).map(|p| p[0]).collect();
        // Block means: (0+10+40+50)/4 = 25, (20+30+60+70)/4 = 45, 105, 125.
        assert_eq!(r, vec![25, 45, 105, 125]);
        assert!(out.chunks(3).all(|p| p[1] == 0 && p[2] == 255));
        // A non-integer ratio keeps a constant image constant (weights sum to 1).
        let flat = vec![77u8; 17 * 13 * 3];
        assert!(resize_area(&flat, 17, 13, 8).iter().all(|&v| v == 77));
    }

    #[test]
    fn zscore_gives_zero_mean_unit_std_and_zeroes_constant_voxels() {
        let mut x = vec![1.0, 5.0, 2.0, 5.0, 3.0, 5.0];
        zscore_columns(&mut x, 3, 2);
        let s = (2.0f32 / 3.0).sqrt();
        approx::assert_abs_diff_eq!(
            &x[..],
            &[-1.0 / s, 0.0, 0.0, 0.0, 1.0 / s, 0.0][..],
            epsilon = 1e-6
        );
    }

    #[test]
    fn csv_fields_keep_quoted_commas() {
        assert_eq!(
            split_csv_line(r#"0,532481,val2017,"(0, 0.1)",x,"a ""b"""#),
            vec!["0", "532481", "val2017", "(0, 0.1)", "x", "a \"b\""]
        );
    }
}
