//! The prepared dataset: one HDF5 file holding fMRI trials, the stimuli they saw, captions, the
//! train/test split and embedding targets. `docs/dataset.md` is the schema's reference; this file
//! is its only writer and reader.
//!
//! Layout (schema version 1; shapes with T trials, V voxels, M stimuli, C captions per stimulus):
//!
//! ```text
//! /                     attrs: schema_version, subject, source, voxels_unpadded, padding, roi
//! /fmri                 f32 [T, V]     one row per trial, voxels already masked (and padded)
//! /trial_stimulus       u32 [T]        index of the stimulus each trial showed
//! /trial_session        u32 [T]        scanning session of each trial
//! /images               u8  [M, H, W, 3]
//! /captions             UTF-8 strings [M, C] (variable length; "" = no caption in that slot)
//! /split                u8  [M]        0 = train, 1 = test (all repeats of a stimulus on one side)
//! /stimulus_id          u32 [M]        the source's own id (NSD: 0-based 73k index)
//! /targets/<name>       f32 [M, D]     embedding targets (`scene`, `clip_image`, `clip_caption`, …)
//! /scene/<name>         u8 or f32 [M, …]  ground-truth scene parameters (synthetic worlds only)
//! ```
//!
//! Why validate on open rather than on use: a training run that dies at epoch 30 on a NaN in row
//! 20,000 wastes hours, so [`DatasetFile::open`] reads every small array and streams `fmri` once,
//! and each problem is reported as the file, the dataset and what is wrong
//! ([`Error::Dataset`]), never a panic.

use std::path::{Path, PathBuf};

use hdf5::types::{TypeDescriptor, VarLenUnicode};
use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::error::{Error, Result};

/// The schema version this build writes and the newest it reads. Bump it when the layout changes
/// in a way an older reader would misread; readers refuse files with a newer version.
pub const SCHEMA_VERSION: u32 = 1;

/// Rows per block when streaming the large arrays (`fmri`, `images`) to and from disk: keeps
/// each HDF5 I/O call well under 2 GiB and bounds the extra memory of a block copy.
const BLOCK_BYTES: usize = 64 << 20;

/// Which side of the train/test split a stimulus is on (stored as u8: 0 train, 1 test).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn code(self) -> u8 {
        match self {
            Split::Train => 0,
            Split::Test => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Where the data came from (stored as the string attribute `source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Synthetic,
    Nsd,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Synthetic => "synthetic",
            Source::Nsd => "nsd",
        }
    }
    fn parse(s: &str) -> Option<Source> {
        match s {
            "synthetic" => Some(Source::Synthetic),
            "nsd" => Some(Source::Nsd),
            _ => None,
        }
    }
}

/// The root attributes other than the schema version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Who was scanned: `subj01` for NSD, `synthetic-<seed>` for a simulated subject.
    pub subject: String,
    pub source: Source,
    /// Voxels inside the ROI mask, before zero padding (NSD subj01 nsdgeneral: 15724).
    pub voxels_unpadded: usize,
    /// Zero columns added before and after the masked voxels (NSD: [10, 10] → 15744). The
    /// mapper's strided convolutions want a width divisible by 2^k; padding keeps real voxels
    /// away from the edges.
    pub padding: [usize; 2],
    /// The ROI the voxels come from (`nsdgeneral`, or `synthetic-visual`).
    pub roi: String,
}

/// A named embedding target matrix `targets/<name>`: one `dim`-vector per stimulus.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub name: String,
    pub dim: usize,
    /// `[M, dim]` row-major.
    pub data: Vec<f32>,
    /// What made it (`"unit vector from scene parameters"`, `"CLIP ViT-B/32 image"`), stored as
    /// the dataset's `description` attribute.
    pub description: String,
}

/// Element data of an auxiliary array.
#[derive(Clone, Debug, PartialEq)]
pub enum AuxData {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// One `scene/<name>` array: a per-stimulus array whose first axis is M. The dataset layer only
/// checks that much; its meaning belongs to whoever wrote it (see `data::synth`).
#[derive(Clone, Debug, PartialEq)]
pub struct AuxArray {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: AuxData,
    /// Names of the last axis's entries (the `columns` attribute), when they have names.
    pub columns: Vec<String>,
}

/// A whole prepared dataset in memory: what [`write`] stores and [`DatasetFile::read_all`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Contents {
    pub meta: Meta,
    /// V, the width of each fmri row (padding included).
    pub voxels: usize,
    /// `[T, V]` row-major.
    pub fmri: Vec<f32>,
    pub trial_stimulus: Vec<u32>,
    pub trial_session: Vec<u32>,
    /// [H, W] of every image.
    pub image_size: [usize; 2],
    /// `[M, H, W, 3]` RGB.
    pub images: Vec<u8>,
    /// M rows of C captions each (every row the same length; "" marks an empty slot).
    pub captions: Vec<Vec<String>>,
    pub split: Vec<Split>,
    pub stimulus_id: Vec<u32>,
    pub targets: Vec<Target>,
    pub scene: Vec<AuxArray>,
}

impl Contents {
    pub fn trials(&self) -> usize {
        self.trial_stimulus.len()
    }
    pub fn stimuli(&self) -> usize {
        self.split.len()
    }

    /// Every rule the reader enforces, checked before anything is written, so `write` can never
    /// produce a file that `DatasetFile::open` rejects. `path` only names the file in errors.
    pub fn check(&self, path: &Path) -> Result<()> {
        let (t, v, m) = (self.trials(), self.voxels, self.stimuli());
        let bad = |name: &str, msg: String| Err(Error::dataset(path, name, msg));
        if self.fmri.len() != t * v {
            return bad(
                "fmri",
                format!("{} values for [{t} trials, {v} voxels]", self.fmri.len()),
            );
        }
        if self.trial_session.len() != t {
            return bad(
                "trial_session",
                format!("{} entries for {t} trials", self.trial_session.len()),
            );
        }
        let [h, w] = self.image_size;
        if self.images.len() != m * h * w * 3 {
            return bad(
                "images",
                format!("{} bytes for [{m}, {h}, {w}, 3]", self.images.len()),
            );
        }
        if self.captions.len() != m {
            return bad(
                "captions",
                format!("{} rows for {m} stimuli", self.captions.len()),
            );
        }
        let c = self.captions.first().map_or(0, |r| r.len());
        if c == 0 {
            return bad("captions", "no caption slots per stimulus".into());
        }
        if let Some(i) = self.captions.iter().position(|r| r.len() != c) {
            return bad(
                "captions",
                format!(
                    "stimulus {i} has {} captions, stimulus 0 has {c}",
                    self.captions[i].len()
                ),
            );
        }
        if self.stimulus_id.len() != m {
            return bad(
                "stimulus_id",
                format!("{} entries for {m} stimuli", self.stimulus_id.len()),
            );
        }
        check_meta(path, &self.meta, v)?;
        check_trials(path, &self.trial_stimulus, m)?;
        check_split(path, &self.split, &self.trial_stimulus)?;
        check_finite(path, "fmri", &self.fmri, v, 0)?;
        for tg in &self.targets {
            let name = format!("targets/{}", tg.name);
            check_name(path, &name, &tg.name)?;
            if tg.dim == 0 || tg.data.len() != m * tg.dim {
                return bad(
                    &name,
                    format!(
                        "{} values for [{m} stimuli, {} dims]",
                        tg.data.len(),
                        tg.dim
                    ),
                );
            }
            check_finite(path, &name, &tg.data, tg.dim, 0)?;
        }
        for a in &self.scene {
            let name = format!("scene/{}", a.name);
            check_name(path, &name, &a.name)?;
            let n: usize = a.shape.iter().product();
            let len = match &a.data {
                AuxData::U8(d) => d.len(),
                AuxData::F32(d) => d.len(),
            };
            if a.shape.first() != Some(&m) || n != len {
                return bad(
                    &name,
                    format!(
                        "shape {:?} with {len} values; the first axis must be the {m} stimuli",
                        a.shape
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Checks for one name component of `targets/<name>` or `scene/<name>`.
fn check_name(path: &Path, full: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.contains('\0') {
        return Err(Error::dataset(
            path,
            full,
            "names must be non-empty and contain no '/' or NUL",
        ));
    }
    Ok(())
}

fn check_meta(path: &Path, meta: &Meta, voxels: usize) -> Result<()> {
    let [a, b] = meta.padding;
    if meta.voxels_unpadded + a + b != voxels {
        return Err(Error::dataset(
            path,
            "/",
            format!(
                "attributes voxels_unpadded {} + padding [{a}, {b}] ≠ the {voxels} columns of fmri",
                meta.voxels_unpadded
            ),
        ));
    }
    Ok(())
}

/// Every trial's stimulus index must name an existing stimulus.
fn check_trials(path: &Path, trial_stimulus: &[u32], stimuli: usize) -> Result<()> {
    if trial_stimulus.is_empty() {
        return Err(Error::dataset(path, "trial_stimulus", "no trials"));
    }
    if let Some((t, &s)) = trial_stimulus
        .iter()
        .enumerate()
        .find(|(_, &s)| s as usize >= stimuli)
    {
        return Err(Error::dataset(
            path,
            "trial_stimulus",
            format!("trial {t} shows stimulus {s}, out of range for {stimuli} stimuli"),
        ));
    }
    Ok(())
}

/// Both splits must hold at least one stimulus that has trials: training or evaluating on nothing
/// is always a preparation mistake.
fn check_split(path: &Path, split: &[Split], trial_stimulus: &[u32]) -> Result<()> {
    let mut has_trials = vec![false; split.len()];
    for &s in trial_stimulus {
        has_trials[s as usize] = true;
    }
    for side in [Split::Train, Split::Test] {
        let n = split
            .iter()
            .zip(&has_trials)
            .filter(|(&s, &h)| s == side && h)
            .count();
        if n == 0 {
            return Err(Error::dataset(
                path,
                "split",
                format!(
                    "the {} split is empty (no stimulus with trials is marked {})",
                    side.name(),
                    side.code()
                ),
            ));
        }
    }
    Ok(())
}

/// No NaN or Inf in a row-major matrix whose first row is `row0`; names the first offender
/// (as trial and voxel for `fmri`, stimulus and dim for targets).
fn check_finite(path: &Path, dataset: &str, data: &[f32], width: usize, row0: usize) -> Result<()> {
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        let what = if data[i].is_nan() { "NaN" } else { "Inf" };
        let (row, col) = if dataset == "fmri" {
            ("trial", "voxel")
        } else {
            ("stimulus", "dim")
        };
        let (r, c) = (row0 + i / width.max(1), i % width.max(1));
        return Err(Error::dataset(
            path,
            dataset,
            format!("{what} at {row} {r}, {col} {c}"),
        ));
    }
    Ok(())
}

/// Writes `contents` to `path` (through `path.tmp` and a rename, so a crash never leaves a
/// half-written file under the real name). Checks everything the reader checks first.
pub fn write(path: &Path, contents: &Contents) -> Result<()> {
    write_with_progress(path, contents, &mut |_| {})
}

/// [`write`], calling `progress(bytes)` as blocks of the large arrays reach the file.
pub fn write_with_progress(
    path: &Path,
    contents: &Contents,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    contents.check(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file(dir, format!("creating directory: {e}")))?;
    }
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let result = write_file(&tmp, path, contents, progress);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::file(path, format!("renaming {} into place: {e}", tmp.display())))
}

fn write_file(tmp: &Path, path: &Path, c: &Contents, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let file = hdf5::File::create(tmp)
        .map_err(|e| Error::file(path, format!("creating {}: {e}", tmp.display())))?;
    let w = Writer { path, root: &file };
    w.attr_u32("schema_version", SCHEMA_VERSION)?;
    w.attr_str("subject", &c.meta.subject)?;
    w.attr_str("source", c.meta.source.name())?;
    w.attr_u32("voxels_unpadded", c.meta.voxels_unpadded as u32)?;
    let pad = ndarray::arr1(&[c.meta.padding[0] as u32, c.meta.padding[1] as u32]);
    file.new_attr_builder()
        .with_data(&pad)
        .create("padding")
        .map_err(|e| w.err("/", "padding", e))?;
    w.attr_str("roi", &c.meta.roi)?;

    let (t, m) = (c.trials(), c.stimuli());
    let [h, wd] = c.image_size;
    w.blocks("fmri", &c.fmri, &[t, c.voxels], progress)?;
    w.array("trial_stimulus", &c.trial_stimulus, &[t])?;
    w.array("trial_session", &c.trial_session, &[t])?;
    w.blocks("images", &c.images, &[m, h, wd, 3], progress)?;
    let c_per = c.captions[0].len();
    let caps: Vec<VarLenUnicode> = c
        .captions
        .iter()
        .flatten()
        .map(|s| {
            s.parse::<VarLenUnicode>()
                .map_err(|e| Error::dataset(path, "captions", format!("caption {s:?}: {e}")))
        })
        .collect::<Result<_>>()?;
    w.array("captions", &caps, &[m, c_per])?;
    let split: Vec<u8> = c.split.iter().map(|s| s.code()).collect();
    let ds = w.array("split", &split, &[m])?;
    w.attr_str_on(&ds, "split", "labels", "0=train,1=test")?;
    w.array("stimulus_id", &c.stimulus_id, &[m])?;

    w.group("targets")?;
    for tg in &c.targets {
        let name = format!("targets/{}", tg.name);
        let ds = w.array(&name, &tg.data, &[m, tg.dim])?;
        w.attr_str_on(&ds, &name, "description", &tg.description)?;
    }
    if !c.scene.is_empty() {
        w.group("scene")?;
    }
    for a in &c.scene {
        let name = format!("scene/{}", a.name);
        let ds = match &a.data {
            AuxData::U8(d) => w.array(&name, d, &a.shape)?,
            AuxData::F32(d) => w.array(&name, d, &a.shape)?,
        };
        if !a.columns.is_empty() {
            let cols: Vec<VarLenUnicode> = a
                .columns
                .iter()
                .map(|s| s.parse().unwrap_or_default())
                .collect();
            ds.new_attr_builder()
                .with_data(&ndarray::Array1::from(cols))
                .create("columns")
                .map_err(|e| w.err(&name, "columns", e))?;
        }
    }
    file.close()
        .map_err(|e| Error::file(path, format!("closing {}: {e}", tmp.display())))?;
    // The rename is only atomic if the data reached the disk first.
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::file(path, format!("syncing {}: {e}", tmp.display())))
}

/// The file being written and the name errors should report (the final path, not the temp).
struct Writer<'a> {
    path: &'a Path,
    root: &'a hdf5::File,
}

impl Writer<'_> {
    fn err(&self, dataset: &str, what: &str, e: hdf5::Error) -> Error {
        Error::dataset(self.path, dataset, format!("writing {what}: {e}"))
    }

    fn attr_u32(&self, name: &str, v: u32) -> Result<()> {
        self.root
            .new_attr::<u32>()
            .create(name)
            .and_then(|a| a.write_scalar(&v))
            .map_err(|e| self.err("/", name, e))
    }

    fn attr_str(&self, name: &str, v: &str) -> Result<()> {
        let s: VarLenUnicode = v.parse().map_err(|e| {
            Error::dataset(self.path, "/", format!("attribute {name} = {v:?}: {e}"))
        })?;
        self.root
            .new_attr::<VarLenUnicode>()
            .create(name)
            .and_then(|a| a.write_scalar(&s))
            .map_err(|e| self.err("/", name, e))
    }

    fn attr_str_on(&self, ds: &hdf5::Dataset, dataset: &str, name: &str, v: &str) -> Result<()> {
        let s: VarLenUnicode = v.parse().map_err(|e| {
            Error::dataset(self.path, dataset, format!("attribute {name} = {v:?}: {e}"))
        })?;
        ds.new_attr::<VarLenUnicode>()
            .create(name)
            .and_then(|a| a.write_scalar(&s))
            .map_err(|e| self.err(dataset, name, e))
    }

    /// A group without modification times, so the same contents give the same bytes.
    fn group(&self, name: &str) -> Result<()> {
        self.root
            .create_group_builder()
            .obj_track_times(false)
            .create(name)
            .map(|_| ())
            .map_err(|e| self.err(name, "the group", e))
    }

    fn array<T: hdf5::H5Type>(
        &self,
        name: &str,
        data: &[T],
        shape: &[usize],
    ) -> Result<hdf5::Dataset> {
        let view = ArrayViewD::from_shape(IxDyn(shape), data)
            .map_err(|e| Error::dataset(self.path, name, format!("shape {shape:?}: {e}")))?;
        self.root
            .new_dataset_builder()
            .with_data(&view)
            .create(name)
            .map_err(|e| self.err(name, "data", e))
    }

    /// A large array written in row blocks (first axis) of about `BLOCK_BYTES`.
    fn blocks<T: hdf5::H5Type>(
        &self,
        name: &str,
        data: &[T],
        shape: &[usize],
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let ds = self
            .root
            .new_dataset::<T>()
            .shape(shape)
            .create(name)
            .map_err(|e| self.err(name, "the dataset", e))?;
        let row: usize = shape[1..].iter().product();
        let step = (BLOCK_BYTES / (row * std::mem::size_of::<T>()).max(1)).max(1);
        let mut r0 = 0;
        while r0 < shape[0] {
            let r1 = (r0 + step).min(shape[0]);
            let mut bshape = shape.to_vec();
            bshape[0] = r1 - r0;
            let view = ArrayViewD::from_shape(IxDyn(&bshape), &data[r0 * row..r1 * row])
                .map_err(|e| Error::dataset(self.path, name, format!("{e}")))?;
            ds.write_slice(&view, rows(r0..r1, shape.len()))
                .map_err(|e| self.err(name, &format!("rows {r0}..{r1}"), e))?;
            progress(((r1 - r0) * row * std::mem::size_of::<T>()) as u64);
            r0 = r1;
        }
        Ok(())
    }
}

/// Adds `targets/<name>` to an existing prepared file, replacing one of the same name (and
/// dropping `augmented/<name>`, the views of the replaced target). This is
/// how later commands (`embed`) attach CLIP targets without rewriting the trials. It edits the
/// file in place (HDF5 has no cheap atomic append); the file is validated before and after.
pub fn write_target(path: &Path, target: &Target) -> Result<()> {
    let stimuli = DatasetFile::open(path)?.summary().stimuli;
    let name = format!("targets/{}", target.name);
    check_name(path, &name, &target.name)?;
    if target.dim == 0 || target.data.len() != stimuli * target.dim {
        return Err(Error::dataset(
            path,
            &name,
            format!(
                "{} values for [{stimuli} stimuli, {} dims]",
                target.data.len(),
                target.dim
            ),
        ));
    }
    check_finite(path, &name, &target.data, target.dim, 0)?;
    {
        let file = hdf5::File::open_rw(path)
            .map_err(|e| Error::file(path, format!("opening for writing: {e}")))?;
        let w = Writer { path, root: &file };
        if !file.link_exists("targets") {
            w.group("targets")?;
        }
        if file.link_exists(&name) {
            file.unlink(&name)
                .map_err(|e| w.err(&name, "the old dataset", e))?;
        }
        // Views of the old target describe another embedding: they go with it.
        let views = format!("augmented/{}", target.name);
        if file.link_exists(&views) {
            file.unlink(&views)
                .map_err(|e| w.err(&views, "the old views", e))?;
        }
        let ds = w.array(&name, &target.data, &[stimuli, target.dim])?;
        w.attr_str_on(&ds, &name, "description", &target.description)?;
    }
    DatasetFile::open(path).map(|_| ())
}

/// Adds `augmented/<name>` `[views, M, dim]` (view k of stimulus s at row `k·M + s`) beside an
/// existing `targets/<name>` of width `dim`, replacing one of the same name; edits in place and
/// validates before and after, like `write_target`.
pub fn write_augmented(
    path: &Path,
    name: &str,
    views: usize,
    dim: usize,
    data: &[f32],
    description: &str,
) -> Result<()> {
    let info = DatasetFile::open(path)?;
    let stimuli = info.summary().stimuli;
    let full = format!("augmented/{name}");
    check_name(path, &full, name)?;
    match info.summary().targets.iter().find(|(n, _)| n == name) {
        Some(&(_, d)) if d == dim => {}
        _ => {
            return Err(Error::dataset(
                path,
                &full,
                format!("needs a {dim}-d targets/{name} to augment; write it first"),
            ))
        }
    }
    drop(info);
    if views == 0 || data.len() != views * stimuli * dim {
        return Err(Error::dataset(
            path,
            &full,
            format!(
                "{} values for [{views} views, {stimuli} stimuli, {dim} dims]",
                data.len()
            ),
        ));
    }
    check_finite(path, &full, data, dim, 0)?;
    {
        let file = hdf5::File::open_rw(path)
            .map_err(|e| Error::file(path, format!("opening for writing: {e}")))?;
        let w = Writer { path, root: &file };
        if !file.link_exists("augmented") {
            w.group("augmented")?;
        }
        if file.link_exists(&full) {
            file.unlink(&full)
                .map_err(|e| w.err(&full, "the old dataset", e))?;
        }
        let ds = w.array(&full, data, &[views, stimuli, dim])?;
        w.attr_str_on(&ds, &full, "description", description)?;
    }
    DatasetFile::open(path).map(|_| ())
}

/// Stores caption screening's choice: `screening/caption_index` u32 `[M, keep]`, the caption
/// slots of each stimulus ranked best first by `method` (a description stored as an attribute).
pub fn write_caption_choice(path: &Path, chosen: &[u32], keep: usize, method: &str) -> Result<()> {
    let file_info = DatasetFile::open(path)?;
    let (stimuli, per) = (
        file_info.summary().stimuli,
        file_info.summary().captions_per_stimulus,
    );
    drop(file_info);
    let name = "screening/caption_index";
    if keep == 0 || chosen.len() != stimuli * keep {
        return Err(Error::dataset(
            path,
            name,
            format!(
                "{} values for [{stimuli} stimuli, {keep} kept]",
                chosen.len()
            ),
        ));
    }
    if let Some(bad) = chosen.iter().find(|&&c| c as usize >= per) {
        return Err(Error::dataset(
            path,
            name,
            format!("caption slot {bad} out of range for {per} captions per stimulus"),
        ));
    }
    {
        let file = hdf5::File::open_rw(path)
            .map_err(|e| Error::file(path, format!("opening for writing: {e}")))?;
        let w = Writer { path, root: &file };
        if !file.link_exists("screening") {
            w.group("screening")?;
        }
        if file.link_exists(name) {
            file.unlink(name)
                .map_err(|e| w.err(name, "the old dataset", e))?;
        }
        let ds = w.array(name, chosen, &[stimuli, keep])?;
        w.attr_str_on(&ds, name, "description", method)?;
    }
    DatasetFile::open(path).map(|_| ())
}

/// The caption slots chosen by `write_caption_choice`, `[M, keep]` row-major, if screened.
pub fn read_caption_choice(path: &Path) -> Result<Option<(Vec<u32>, usize)>> {
    let file = hdf5::File::open(path).map_err(|e| Error::file(path, format!("opening: {e}")))?;
    let name = "screening/caption_index";
    if !file.link_exists(name) {
        return Ok(None);
    }
    let ds = file
        .dataset(name)
        .map_err(|e| Error::dataset(path, name, e.to_string()))?;
    let shape = ds.shape();
    let data: Vec<u32> = ds
        .read_raw()
        .map_err(|e| Error::dataset(path, name, e.to_string()))?;
    Ok(Some((data, shape.get(1).copied().unwrap_or(1))))
}

/// The selection of rows `r` (first axis) and everything along the other `ndim − 1` axes.
pub(crate) fn rows(r: std::ops::Range<usize>, ndim: usize) -> hdf5::Selection {
    let mut sel = vec![hdf5::SliceOrIndex::from(r)];
    sel.extend((1..ndim).map(|_| hdf5::SliceOrIndex::from(..)));
    hdf5::Hyperslab::from(sel).into()
}

/// What `open` learned about a file: enough to print a summary and size every buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub schema_version: u32,
    pub meta: Meta,
    pub trials: usize,
    pub voxels: usize,
    pub stimuli: usize,
    pub image_size: [usize; 2],
    pub captions_per_stimulus: usize,
    pub sessions: usize,
    pub train_stimuli: usize,
    pub test_stimuli: usize,
    pub train_trials: usize,
    pub test_trials: usize,
    /// Fewest and most trials of any stimulus.
    pub repeats: (usize, usize),
    /// `targets/<name>` and its width D.
    pub targets: Vec<(String, usize)>,
    /// `scene/<name>` and its shape.
    pub scene: Vec<(String, Vec<usize>)>,
    /// `augmented/<name>`: (name, views K, width D) of each target's augmented views.
    pub augmented: Vec<(String, usize, usize)>,
}

/// An open, validated prepared dataset. Small arrays are read on open; `fmri`, `images` and the
/// targets are read when asked for.
pub struct DatasetFile {
    path: PathBuf,
    file: hdf5::File,
    summary: Summary,
    trial_stimulus: Vec<u32>,
    trial_session: Vec<u32>,
    split: Vec<Split>,
}

impl DatasetFile {
    /// Opens and validates `path`: attributes, every dataset's dtype and shape, stimulus indices,
    /// splits, and a streamed NaN/Inf scan of `fmri`.
    pub fn open(path: impl AsRef<Path>) -> Result<DatasetFile> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::file(&path, "no such file"));
        }
        let file = hdf5::File::open(&path)
            .map_err(|e| Error::file(&path, format!("not a readable HDF5 file: {e}")))?;
        let r = Reader {
            path: &path,
            file: &file,
        };

        // The version first: a newer layout may differ in ways that would make later checks lie.
        let version = r.attr_uint("schema_version")?;
        if version > SCHEMA_VERSION as u64 {
            return Err(Error::dataset(
                &path,
                "/",
                format!("schema version {version} is newer than this mindreader reads ({SCHEMA_VERSION}); upgrade mindreader"),
            ));
        }
        if version == 0 {
            return Err(Error::dataset(
                &path,
                "/",
                "schema version 0 is not a valid version",
            ));
        }
        let source_name = r.attr_str("source")?;
        let source = Source::parse(&source_name).ok_or_else(|| {
            Error::dataset(
                &path,
                "/",
                format!("attribute source is {source_name:?}; expected \"synthetic\" or \"nsd\""),
            )
        })?;
        let padding = r.attr_uint_vec("padding", 2)?;
        let meta = Meta {
            subject: r.attr_str("subject")?,
            source,
            voxels_unpadded: r.attr_uint("voxels_unpadded")? as usize,
            padding: [padding[0] as usize, padding[1] as usize],
            roi: r.attr_str("roi")?,
        };

        let fmri = r.dataset("fmri", Kind::F32, 2)?;
        let (trials, voxels) = (fmri.shape()[0], fmri.shape()[1]);
        let images = r.dataset("images", Kind::U8, 4)?;
        let ishape = images.shape();
        let stimuli = ishape[0];
        if ishape[3] != 3 {
            return Err(Error::dataset(
                &path,
                "images",
                format!("shape {ishape:?}: the last axis must be 3 (RGB)"),
            ));
        }
        let trial_stimulus = r.indices("trial_stimulus", trials)?;
        let trial_session = r.indices("trial_session", trials)?;
        let captions = r.dataset("captions", Kind::Str, 2)?;
        r.rows("captions", &captions, stimuli)?;
        let split_codes = r.indices("split", usize::MAX)?;
        if split_codes.len() != stimuli {
            return Err(Error::dataset(
                &path,
                "split",
                format!(
                    "{} entries for the {stimuli} stimuli of images",
                    split_codes.len()
                ),
            ));
        }
        let split = split_codes
            .iter()
            .enumerate()
            .map(|(i, &c)| match c {
                0 => Ok(Split::Train),
                1 => Ok(Split::Test),
                _ => Err(Error::dataset(
                    &path,
                    "split",
                    format!("stimulus {i} has split {c}; expected 0 (train) or 1 (test)"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let ids = r.dataset("stimulus_id", Kind::Int, 1)?;
        r.rows("stimulus_id", &ids, stimuli)?;

        check_meta(&path, &meta, voxels)?;
        check_trials(&path, &trial_stimulus, stimuli)?;
        check_split(&path, &split, &trial_stimulus)?;

        // `targets` may be absent (a freshly ingested NSD file before any `embed`).
        let mut targets = Vec::new();
        for name in if file.link_exists("targets") {
            r.members("targets")?
        } else {
            Vec::new()
        } {
            let full = format!("targets/{name}");
            let ds = r.dataset(&full, Kind::F32, 2)?;
            r.rows(&full, &ds, stimuli)?;
            targets.push((name, ds.shape()[1]));
        }
        let mut scene = Vec::new();
        if file.link_exists("scene") {
            for name in r.members("scene")? {
                let full = format!("scene/{name}");
                let ds = r.dataset(&full, Kind::U8OrF32, 1)?;
                r.rows(&full, &ds, stimuli)?;
                scene.push((name, ds.shape()));
            }
        }

        // `augmented/<name>` [K, M, D]: views of `targets/<name>`, which must exist with width D.
        let mut augmented = Vec::new();
        if file.link_exists("augmented") {
            for name in r.members("augmented")? {
                let full = format!("augmented/{name}");
                let ds = r.dataset(&full, Kind::F32, 3)?;
                let shape = ds.shape();
                if shape[0] == 0 || shape[1] != stimuli {
                    return Err(Error::dataset(&path, &full, format!("shape {shape:?}: expected [views ≥ 1, the {stimuli} stimuli of images, D]")));
                }
                match targets.iter().find(|(n, _)| *n == name) {
                    Some(&(_, d)) if d == shape[2] => {}
                    Some(&(_, d)) => {
                        return Err(Error::dataset(
                            &path,
                            &full,
                            format!("views are {}-d but targets/{name} is {d}-d", shape[2]),
                        ))
                    }
                    None => {
                        return Err(Error::dataset(
                            &path,
                            &full,
                            format!("augmented views without their un-augmented targets/{name}"),
                        ))
                    }
                }
                augmented.push((name, shape[0], shape[2]));
            }
        }

        let mut per_stim = vec![0usize; stimuli];
        for &s in &trial_stimulus {
            per_stim[s as usize] += 1;
        }
        let count = |side: Split| split.iter().filter(|&&s| s == side).count();
        let trials_in = |side: Split| {
            trial_stimulus
                .iter()
                .filter(|&&s| split[s as usize] == side)
                .count()
        };
        let mut sessions: Vec<u32> = trial_session.clone();
        sessions.sort_unstable();
        sessions.dedup();
        let summary = Summary {
            schema_version: version as u32,
            meta,
            trials,
            voxels,
            stimuli,
            image_size: [ishape[1], ishape[2]],
            captions_per_stimulus: captions.shape()[1],
            sessions: sessions.len(),
            train_stimuli: count(Split::Train),
            test_stimuli: count(Split::Test),
            train_trials: trials_in(Split::Train),
            test_trials: trials_in(Split::Test),
            repeats: (
                per_stim.iter().copied().min().unwrap_or(0),
                per_stim.iter().copied().max().unwrap_or(0),
            ),
            targets,
            scene,
            augmented,
        };
        let this = DatasetFile {
            path,
            file,
            summary,
            trial_stimulus,
            trial_session,
            split,
        };
        this.scan_fmri()?;
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn summary(&self) -> &Summary {
        &self.summary
    }
    pub fn trial_stimulus(&self) -> &[u32] {
        &self.trial_stimulus
    }
    pub fn trial_session(&self) -> &[u32] {
        &self.trial_session
    }
    pub fn split(&self) -> &[Split] {
        &self.split
    }

    /// Streams `fmri` block by block, failing on the first NaN or Inf.
    fn scan_fmri(&self) -> Result<()> {
        self.read_blocks::<f32>("fmri", &mut |row0, block, width| {
            check_finite(&self.path, "fmri", block, width, row0)
        })
    }

    /// The whole `[T, V]` fmri matrix, row-major.
    pub fn fmri(&self) -> Result<Vec<f32>> {
        let (t, v) = (self.summary.trials, self.summary.voxels);
        let mut out = Vec::with_capacity(t * v);
        self.read_blocks::<f32>("fmri", &mut |row0, block, width| {
            check_finite(&self.path, "fmri", block, width, row0)?;
            out.extend_from_slice(block);
            Ok(())
        })?;
        Ok(out)
    }

    /// All images `[M, H, W, 3]`.
    pub fn images(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_blocks::<u8>("images", &mut |_, block, _| {
            out.extend_from_slice(block);
            Ok(())
        })?;
        Ok(out)
    }

    /// Images `start..start + count` as `[count, H, W, 3]`.
    pub fn images_range(&self, start: usize, count: usize) -> Result<Vec<u8>> {
        let m = self.summary.stimuli;
        if start + count > m {
            return Err(Error::dataset(
                &self.path,
                "images",
                format!(
                    "rows {start}..{} out of range for {m} stimuli",
                    start + count
                ),
            ));
        }
        let ds = self.open_ds("images")?;
        let a: ArrayD<u8> = ds
            .read_slice(rows(start..start + count, 4))
            .map_err(|e| self.read_err("images", e))?;
        Ok(a.into_raw_vec_and_offset().0)
    }

    /// Captions, M rows of C strings.
    pub fn captions(&self) -> Result<Vec<Vec<String>>> {
        let ds = self.open_ds("captions")?;
        let a: ArrayD<VarLenUnicode> = ds.read_dyn().map_err(|e| self.read_err("captions", e))?;
        let c = self.summary.captions_per_stimulus;
        let flat: Vec<String> = a.iter().map(|s| s.as_str().to_owned()).collect();
        Ok(flat.chunks(c.max(1)).map(|r| r.to_vec()).collect())
    }

    pub fn stimulus_ids(&self) -> Result<Vec<u32>> {
        let ds = self.open_ds("stimulus_id")?;
        let v: Vec<i64> = ds.read_raw().map_err(|e| self.read_err("stimulus_id", e))?;
        Ok(v.into_iter().map(|x| x as u32).collect())
    }

    /// `targets/<name>` as `(data [M, D], D)`; a missing name is an error listing those present.
    pub fn target(&self, name: &str) -> Result<(Vec<f32>, usize)> {
        let Some(&(_, dim)) = self.summary.targets.iter().find(|(n, _)| n == name) else {
            let have: Vec<&str> = self
                .summary
                .targets
                .iter()
                .map(|(n, _)| n.as_str())
                .collect();
            return Err(Error::dataset(
                &self.path,
                format!("targets/{name}"),
                format!("no such target; the file has [{}]", have.join(", ")),
            ));
        };
        let full = format!("targets/{name}");
        let ds = self.open_ds(&full)?;
        let data: Vec<f32> = ds.read_raw().map_err(|e| self.read_err(&full, e))?;
        check_finite(&self.path, &full, &data, dim, 0)?;
        Ok((data, dim))
    }

    /// `augmented/<name>` as `(data [K, M, D], K, D)`: K augmented views of every stimulus'
    /// target (view k of stimulus s at row `k·M + s`). A missing name is an error.
    pub fn augmented(&self, name: &str) -> Result<(Vec<f32>, usize, usize)> {
        let full = format!("augmented/{name}");
        let Some(&(_, views, dim)) = self.summary.augmented.iter().find(|(n, _, _)| n == name)
        else {
            return Err(Error::dataset(&self.path, full, format!("no augmented views of targets/{name}; write them with `screen-captions --augment-views K`")));
        };
        let ds = self.open_ds(&full)?;
        let data: Vec<f32> = ds.read_raw().map_err(|e| self.read_err(&full, e))?;
        check_finite(&self.path, &full, &data, dim, 0)?;
        Ok((data, views, dim))
    }

    /// The `description` attribute of `targets/<name>`, or "" when it has none.
    pub fn target_description(&self, name: &str) -> Result<String> {
        let ds = self.open_ds(&format!("targets/{name}"))?;
        Ok(ds
            .attr("description")
            .and_then(|a| a.read_scalar::<VarLenUnicode>())
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default())
    }

    /// `scene/<name>`, with its column names when it has them.
    pub fn scene_array(&self, name: &str) -> Result<AuxArray> {
        let full = format!("scene/{name}");
        let Some((_, shape)) = self.summary.scene.iter().find(|(n, _)| n == name) else {
            return Err(Error::dataset(
                &self.path,
                &full,
                "no such scene array (only synthetic worlds have scene parameters)",
            ));
        };
        let ds = self.open_ds(&full)?;
        let td = ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| self.read_err(&full, e))?;
        let data = match td {
            TypeDescriptor::Unsigned(hdf5::types::IntSize::U1) => {
                AuxData::U8(ds.read_raw().map_err(|e| self.read_err(&full, e))?)
            }
            _ => AuxData::F32(ds.read_raw().map_err(|e| self.read_err(&full, e))?),
        };
        let columns = match ds.attr("columns") {
            Ok(a) => a
                .read_raw::<VarLenUnicode>()
                .map_err(|e| self.read_err(&full, e))?
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        Ok(AuxArray {
            name: name.to_owned(),
            shape: shape.clone(),
            data,
            columns,
        })
    }

    /// `scene/unseen_combination` as flags (a compositional world: the stimulus shows a (shape,
    /// colour, side) combination no training stimulus shows); `None` when the file has none.
    pub fn unseen_combination(&self) -> Result<Option<Vec<bool>>> {
        if !self
            .summary
            .scene
            .iter()
            .any(|(n, _)| n == "unseen_combination")
        {
            return Ok(None);
        }
        match self.scene_array("unseen_combination")?.data {
            AuxData::U8(v) => Ok(Some(v.iter().map(|&f| f != 0).collect())),
            AuxData::F32(_) => Err(Error::dataset(
                &self.path,
                "scene/unseen_combination",
                "should be uint8",
            )),
        }
    }

    /// Everything, in memory.
    pub fn read_all(&self) -> Result<Contents> {
        let s = &self.summary;
        let mut targets = Vec::new();
        for (name, _) in &s.targets {
            let (data, dim) = self.target(name)?;
            targets.push(Target {
                name: name.clone(),
                dim,
                data,
                description: self.target_description(name)?,
            });
        }
        let scene = s
            .scene
            .iter()
            .map(|(n, _)| self.scene_array(n))
            .collect::<Result<_>>()?;
        Ok(Contents {
            meta: s.meta.clone(),
            voxels: s.voxels,
            fmri: self.fmri()?,
            trial_stimulus: self.trial_stimulus.clone(),
            trial_session: self.trial_session.clone(),
            image_size: s.image_size,
            images: self.images()?,
            captions: self.captions()?,
            split: self.split.clone(),
            stimulus_id: self.stimulus_ids()?,
            targets,
            scene,
        })
    }

    fn open_ds(&self, name: &str) -> Result<hdf5::Dataset> {
        self.file.dataset(name).map_err(|e| self.read_err(name, e))
    }

    fn read_err(&self, name: &str, e: hdf5::Error) -> Error {
        Error::dataset(&self.path, name, format!("reading: {e}"))
    }

    /// Calls `f(first_row, block, row_width)` for consecutive row blocks of a 2-D+ dataset.
    fn read_blocks<T: hdf5::H5Type + Copy>(&self, name: &str, f: &mut BlockFn<T>) -> Result<()> {
        let ds = self.open_ds(name)?;
        let shape = ds.shape();
        let row: usize = shape[1..].iter().product();
        let step = (BLOCK_BYTES / (row * std::mem::size_of::<T>()).max(1)).max(1);
        let mut r0 = 0;
        while r0 < shape[0] {
            let r1 = (r0 + step).min(shape[0]);
            let a: ArrayD<T> = ds
                .read_slice(rows(r0..r1, shape.len()))
                .map_err(|e| self.read_err(name, e))?;
            let (v, _) = a.into_raw_vec_and_offset();
            f(r0, &v, row)?;
            r0 = r1;
        }
        Ok(())
    }
}

/// A consumer of row blocks: `(first_row, values, row_width)`.
type BlockFn<'a, T> = dyn FnMut(usize, &[T], usize) -> Result<()> + 'a;

/// The element kinds the schema allows, by dataset.
#[derive(Clone, Copy)]
enum Kind {
    F32,
    U8,
    /// Any integer width or signedness (readers convert); indices and labels.
    Int,
    /// Variable-length UTF-8 strings.
    Str,
    /// `scene/*`: u8 codes or f32 values.
    U8OrF32,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::F32 => "float32",
            Kind::U8 => "uint8",
            Kind::Int => "an integer type",
            Kind::Str => "variable-length UTF-8 strings",
            Kind::U8OrF32 => "uint8 or float32",
        }
    }

    fn accepts(self, td: &TypeDescriptor) -> bool {
        use hdf5::types::{FloatSize, IntSize};
        match self {
            Kind::F32 => matches!(td, TypeDescriptor::Float(FloatSize::U4)),
            Kind::U8 => matches!(td, TypeDescriptor::Unsigned(IntSize::U1)),
            Kind::Int => matches!(td, TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_)),
            Kind::Str => matches!(td, TypeDescriptor::VarLenUnicode),
            Kind::U8OrF32 => matches!(
                td,
                TypeDescriptor::Unsigned(IntSize::U1) | TypeDescriptor::Float(FloatSize::U4)
            ),
        }
    }
}

/// Validating accessors for `open`.
struct Reader<'a> {
    path: &'a Path,
    file: &'a hdf5::File,
}

impl Reader<'_> {
    fn missing_attr(&self, name: &str) -> Error {
        Error::dataset(
            self.path,
            "/",
            format!("attribute {name} is missing (is this a mindreader prepared dataset?)"),
        )
    }

    fn attr(&self, name: &str) -> Result<hdf5::Attribute> {
        self.file.attr(name).map_err(|_| self.missing_attr(name))
    }

    fn attr_uint(&self, name: &str) -> Result<u64> {
        let a = self.attr(name)?;
        let td = a
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| Error::dataset(self.path, "/", format!("attribute {name}: {e}")))?;
        if !Kind::Int.accepts(&td) || !a.is_scalar() {
            return Err(Error::dataset(
                self.path,
                "/",
                format!(
                    "attribute {name} is {td} {:?}; expected a scalar integer",
                    a.shape()
                ),
            ));
        }
        let v: i64 = a
            .read_scalar()
            .map_err(|e| Error::dataset(self.path, "/", format!("attribute {name}: {e}")))?;
        u64::try_from(v).map_err(|_| {
            Error::dataset(
                self.path,
                "/",
                format!("attribute {name} is {v}; expected ≥ 0"),
            )
        })
    }

    fn attr_uint_vec(&self, name: &str, n: usize) -> Result<Vec<u64>> {
        let a = self.attr(name)?;
        let td = a
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| Error::dataset(self.path, "/", format!("attribute {name}: {e}")))?;
        if !Kind::Int.accepts(&td) || a.shape() != [n] {
            return Err(Error::dataset(
                self.path,
                "/",
                format!(
                    "attribute {name} is {td} {:?}; expected {n} integers",
                    a.shape()
                ),
            ));
        }
        let v: Vec<i64> = a
            .read_raw()
            .map_err(|e| Error::dataset(self.path, "/", format!("attribute {name}: {e}")))?;
        v.into_iter()
            .map(|x| {
                u64::try_from(x).map_err(|_| {
                    Error::dataset(
                        self.path,
                        "/",
                        format!("attribute {name} holds {x}; expected ≥ 0"),
                    )
                })
            })
            .collect()
    }

    fn attr_str(&self, name: &str) -> Result<String> {
        let a = self.attr(name)?;
        let td = a
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| Error::dataset(self.path, "/", format!("attribute {name}: {e}")))?;
        if !Kind::Str.accepts(&td) || !a.is_scalar() {
            return Err(Error::dataset(
                self.path,
                "/",
                format!(
                    "attribute {name} is {td} {:?}; expected a UTF-8 string",
                    a.shape()
                ),
            ));
        }
        let s: VarLenUnicode = a
            .read_scalar()
            .map_err(|e| Error::dataset(self.path, "/", format!("attribute {name}: {e}")))?;
        Ok(s.as_str().to_owned())
    }

    /// Opens `name` and checks its element kind and rank.
    fn dataset(&self, name: &str, kind: Kind, rank: usize) -> Result<hdf5::Dataset> {
        let ds = self
            .file
            .dataset(name)
            .map_err(|_| Error::dataset(self.path, name, "missing"))?;
        let td = ds.dtype().and_then(|t| t.to_descriptor());
        let ok = td.as_ref().is_ok_and(|td| kind.accepts(td));
        if !ok {
            let got = td.map_or_else(|e| format!("an unsupported type ({e})"), |t| t.to_string());
            return Err(Error::dataset(
                self.path,
                name,
                format!("dtype is {got}; expected {}", kind.expected()),
            ));
        }
        let shape = ds.shape();
        // `scene/*` may have any rank ≥ 1; everything else exactly its rank.
        let rank_ok = if matches!(kind, Kind::U8OrF32) {
            shape.len() >= rank
        } else {
            shape.len() == rank
        };
        if !rank_ok {
            return Err(Error::dataset(
                self.path,
                name,
                format!(
                    "rank {} (shape {shape:?}); expected rank {rank}",
                    shape.len()
                ),
            ));
        }
        Ok(ds)
    }

    /// The first axis of `ds` must be `rows` long.
    fn rows(&self, name: &str, ds: &hdf5::Dataset, rows: usize) -> Result<()> {
        let shape = ds.shape();
        if shape[0] != rows {
            return Err(Error::dataset(
                self.path,
                name,
                format!("shape {shape:?}: the first axis must be the {rows} stimuli of images"),
            ));
        }
        Ok(())
    }

    /// A 1-D integer dataset of `len` non-negative entries (any `len` when `usize::MAX`), as u32.
    fn indices(&self, name: &str, len: usize) -> Result<Vec<u32>> {
        let ds = self.dataset(name, Kind::Int, 1)?;
        let n = ds.shape()[0];
        if len != usize::MAX && n != len {
            return Err(Error::dataset(
                self.path,
                name,
                format!("{n} entries; expected one per trial ({len})"),
            ));
        }
        let v: Vec<i64> = ds
            .read_raw()
            .map_err(|e| Error::dataset(self.path, name, format!("reading: {e}")))?;
        v.iter()
            .enumerate()
            .map(|(i, &x)| {
                u32::try_from(x).map_err(|_| {
                    Error::dataset(
                        self.path,
                        name,
                        format!("entry {i} is {x}; expected 0..2^32"),
                    )
                })
            })
            .collect()
    }

    /// Names inside a group; the group itself must exist.
    fn members(&self, group: &str) -> Result<Vec<String>> {
        let g = self
            .file
            .group(group)
            .map_err(|_| Error::dataset(self.path, group, "missing group"))?;
        let mut names = g
            .member_names()
            .map_err(|e| Error::dataset(self.path, group, format!("listing: {e}")))?;
        names.sort();
        Ok(names)
    }
}
