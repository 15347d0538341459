//! Mini-batches from a prepared dataset: shuffled, seeded, by trial or by stimulus, with the
//! repeats of a stimulus averaged or kept as single trials.
//!
//! The data is staged once ([`Staged`]): the whole `fmri` matrix, the repeat-averaged matrix and
//! one target matrix become tensors on a `Device` (NSD subj01, ~27,750 × 15,744 f32 ≈ 1.7 GB,
//! fits a GPU easily), and every batch is a row gather (`ops::embedding`) from them, so a
//! GPU-staged epoch never copies fmri over PCIe again. A train and a test [`Loader`] share one
//! `Staged`.
//!
//! Order is a pure function of (seed, epoch): epoch 7 is the same whether or not epochs 0–6 ran,
//! which makes resumed training reproducible.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::autograd::Tape;
use crate::data::dataset::{DatasetFile, Split};
use crate::error::{Error, Result};
use crate::ops::embedding::embedding;
use crate::rng::{stage, Rng};
use crate::tensor::{Device, Tensor};

/// What one batch row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// One row per trial: every trial once per epoch (a stimulus appears once per repeat).
    Trials,
    /// One row per stimulus, once per epoch: the mean of its repeats (`average_repeats`), or one
    /// of its trials drawn afresh each epoch (a cheap augmentation).
    Stimuli { average_repeats: bool },
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub split: Split,
    pub sampling: Sampling,
    pub batch_size: usize,
    /// Off: the natural order (trial or stimulus index), for evaluation.
    pub shuffle: bool,
    /// Drop a last batch smaller than `batch_size` (contrastive losses want full batches).
    pub drop_last: bool,
    pub seed: u64,
}

impl LoaderConfig {
    /// Shuffled, repeat-averaged stimuli: the Mind Reader training setting.
    pub fn train(batch_size: usize, seed: u64) -> LoaderConfig {
        LoaderConfig {
            split: Split::Train,
            sampling: Sampling::Stimuli {
                average_repeats: true,
            },
            batch_size,
            shuffle: true,
            drop_last: false,
            seed,
        }
    }
    /// Test stimuli, repeats averaged, in order.
    pub fn test(batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            split: Split::Test,
            sampling: Sampling::Stimuli {
                average_repeats: true,
            },
            batch_size,
            shuffle: false,
            drop_last: false,
            seed: 0,
        }
    }
}

/// A prepared dataset's trials, repeat averages and one target, as tensors on one device.
pub struct Staged {
    path: PathBuf,
    device: Device,
    /// `[T, V]`.
    fmri: Tensor,
    /// `[M, V]`: each stimulus's mean over its trials (zero for a stimulus with none).
    averaged: Tensor,
    /// `[M, D]`.
    targets: Tensor,
    target_name: String,
    trial_stimulus: Vec<u32>,
    /// For each stimulus, its trial rows.
    trials_of: Vec<Vec<u32>>,
    split: Vec<Split>,
}

impl Staged {
    /// Reads `fmri` and `targets/<target>` from an open dataset and puts them on `device`.
    pub fn load(file: &DatasetFile, target: &str, device: &Device) -> Result<Arc<Staged>> {
        let s = file.summary();
        let (targets, dim) = file.target(target)?;
        let fmri = file.fmri()?;
        Staged::from_parts(
            file.path(),
            fmri,
            s.voxels,
            file.trial_stimulus().to_vec(),
            file.split().to_vec(),
            targets,
            dim,
            target,
            device,
        )
    }

    /// Stages data already in memory (`fmri` `[T, V]`, `targets` `[M, dim]`); `path` only
    /// names the source in errors.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        path: &Path,
        fmri: Vec<f32>,
        voxels: usize,
        trial_stimulus: Vec<u32>,
        split: Vec<Split>,
        targets: Vec<f32>,
        dim: usize,
        target_name: &str,
        device: &Device,
    ) -> Result<Arc<Staged>> {
        let (t, m) = (trial_stimulus.len(), split.len());
        if fmri.len() != t * voxels || targets.len() != m * dim {
            return Err(Error::dataset(path, "fmri", format!("{} fmri values for {t} trials × {voxels} voxels, {} target values for {m} × {dim}", fmri.len(), targets.len())));
        }
        let mut trials_of = vec![Vec::new(); m];
        for (k, &s) in trial_stimulus.iter().enumerate() {
            let list = trials_of.get_mut(s as usize).ok_or_else(|| {
                Error::dataset(
                    path,
                    "trial_stimulus",
                    format!("trial {k} shows stimulus {s} of {m}"),
                )
            })?;
            list.push(k as u32);
        }
        let averaged = average_repeats(&fmri, voxels, &trial_stimulus, m);
        let host = Device::Cpu;
        let stage = |data: Vec<f32>, shape: &[usize]| {
            Tensor::from_vec(data, shape, &host).and_then(|t| {
                if device.is_cuda() {
                    t.to_device(device)
                } else {
                    Ok(t)
                }
            })
        };
        Ok(Arc::new(Staged {
            path: path.to_path_buf(),
            device: device.clone(),
            fmri: stage(fmri, &[t, voxels])?,
            averaged: stage(averaged, &[m, voxels])?,
            targets: stage(targets, &[m, dim])?,
            target_name: target_name.to_owned(),
            trial_stimulus,
            trials_of,
            split,
        }))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn voxels(&self) -> usize {
        self.fmri.shape()[1]
    }
    pub fn target_dim(&self) -> usize {
        self.targets.shape()[1]
    }
    pub fn target_name(&self) -> &str {
        &self.target_name
    }
    /// The staged `[T, V]` trials.
    pub fn fmri(&self) -> &Tensor {
        &self.fmri
    }
    /// The staged `[M, V]` repeat averages.
    pub fn averaged(&self) -> &Tensor {
        &self.averaged
    }
    pub fn targets(&self) -> &Tensor {
        &self.targets
    }
}

/// `[M, V]`: each stimulus's mean over its trials (zero for a stimulus with none). Trials must
/// index stimuli below `m` (the dataset reader checks this).
pub fn average_repeats(fmri: &[f32], voxels: usize, trial_stimulus: &[u32], m: usize) -> Vec<f32> {
    let mut averaged = vec![0f32; m * voxels];
    let mut counts = vec![0usize; m];
    for (k, &s) in trial_stimulus.iter().enumerate() {
        let Some(acc) = averaged.get_mut(s as usize * voxels..(s as usize + 1) * voxels) else {
            continue;
        };
        for (a, &x) in acc.iter_mut().zip(&fmri[k * voxels..][..voxels]) {
            *a += x;
        }
        counts[s as usize] += 1;
    }
    for (row, &n) in averaged.chunks_exact_mut(voxels.max(1)).zip(&counts) {
        row.iter_mut().for_each(|a| *a /= n.max(1) as f32);
    }
    averaged
}

/// One mini-batch: fmri rows `[B, V]`, their target rows `[B, D]` (on the staging device) and
/// which stimulus (and trial, for single-trial rows) each row is.
#[derive(Debug)]
pub struct Batch {
    pub fmri: Tensor,
    pub target: Tensor,
    pub stimuli: Vec<u32>,
    /// The trial row behind each fmri row; empty when repeats are averaged.
    pub trials: Vec<u32>,
}

/// Batches of one split.
pub struct Loader {
    staged: Arc<Staged>,
    cfg: LoaderConfig,
    /// Trial indices (`Sampling::Trials`) or stimulus indices with trials (`Stimuli`) of the split.
    items: Vec<u32>,
}

impl Loader {
    pub fn new(staged: Arc<Staged>, cfg: LoaderConfig) -> Result<Loader> {
        if cfg.batch_size == 0 {
            return Err(Error::Invalid("loader: batch size must be ≥ 1".into()));
        }
        let items: Vec<u32> = match cfg.sampling {
            Sampling::Trials => (0..staged.trial_stimulus.len() as u32)
                .filter(|&k| staged.split[staged.trial_stimulus[k as usize] as usize] == cfg.split)
                .collect(),
            Sampling::Stimuli { .. } => (0..staged.split.len() as u32)
                .filter(|&s| {
                    staged.split[s as usize] == cfg.split
                        && !staged.trials_of[s as usize].is_empty()
                })
                .collect(),
        };
        if items.is_empty() {
            return Err(Error::dataset(
                &staged.path,
                "split",
                format!("the {} split has nothing to load", cfg.split.name()),
            ));
        }
        if cfg.drop_last && items.len() < cfg.batch_size {
            return Err(Error::Invalid(format!(
                "loader: the {} split has {} rows, fewer than one batch of {} (with drop_last)",
                cfg.split.name(),
                items.len(),
                cfg.batch_size
            )));
        }
        Ok(Loader { staged, cfg, items })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }
    pub fn staged(&self) -> &Arc<Staged> {
        &self.staged
    }
    /// Rows per epoch (before `drop_last`).
    pub fn rows(&self) -> usize {
        self.items.len()
    }
    /// Batches per epoch.
    pub fn batches(&self) -> usize {
        if self.cfg.drop_last {
            self.items.len() / self.cfg.batch_size
        } else {
            self.items.len().div_ceil(self.cfg.batch_size)
        }
    }

    /// The batches of epoch `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> Epoch<'_> {
        let mut order = self.items.clone();
        if self.cfg.shuffle {
            Rng::stream(self.cfg.seed, stage::LOADER_ORDER, epoch).shuffle(&mut order);
        }
        Epoch {
            loader: self,
            order,
            next: 0,
            epoch,
        }
    }

    /// Builds the batch for these items (trial or stimulus indices, as `items`).
    fn batch(&self, items: &[u32], epoch: u64) -> Result<Batch> {
        let st = &self.staged;
        let mut tape = Tape::inference();
        let (fmri, stimuli, trials) = match self.cfg.sampling {
            Sampling::Trials => {
                let stimuli: Vec<u32> = items
                    .iter()
                    .map(|&k| st.trial_stimulus[k as usize])
                    .collect();
                (
                    embedding(&mut tape, &st.fmri, items)?,
                    stimuli,
                    items.to_vec(),
                )
            }
            Sampling::Stimuli {
                average_repeats: true,
            } => (
                embedding(&mut tape, &st.averaged, items)?,
                items.to_vec(),
                Vec::new(),
            ),
            Sampling::Stimuli {
                average_repeats: false,
            } => {
                // Each stimulus's repeat for this epoch, from its own stream: independent of
                // batch size and of the shuffle.
                let trials: Vec<u32> = items
                    .iter()
                    .map(|&s| {
                        let rows = &st.trials_of[s as usize];
                        rows[Rng::stream(
                            self.cfg.seed,
                            stage::LOADER_REPEAT,
                            (epoch << 32) | s as u64,
                        )
                        .below(rows.len())]
                    })
                    .collect();
                (
                    embedding(&mut tape, &st.fmri, &trials)?,
                    items.to_vec(),
                    trials,
                )
            }
        };
        let target = embedding(&mut tape, &st.targets, &stimuli)?;
        Ok(Batch {
            fmri,
            target,
            stimuli,
            trials,
        })
    }
}

/// An epoch's batches; each is built (gathered on the staging device) when asked for.
pub struct Epoch<'a> {
    loader: &'a Loader,
    order: Vec<u32>,
    next: usize,
    epoch: u64,
}

impl Iterator for Epoch<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let b = self.loader.cfg.batch_size;
        let rest = self.order.len() - self.next;
        if rest == 0 || (self.loader.cfg.drop_last && rest < b) {
            return None;
        }
        let end = self.next + rest.min(b);
        let items = &self.order[self.next..end];
        self.next = end;
        Some(self.loader.batch(items, self.epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 stimuli (0, 1 train; 2, 3 test), 2–3 trials each; trial k's fmri row is [k, k].
    fn staged() -> Arc<Staged> {
        let trial_stimulus = vec![0, 1, 2, 3, 0, 1, 2, 3, 0, 2];
        let fmri: Vec<f32> = (0..10).flat_map(|k| [k as f32, k as f32]).collect();
        let split = vec![Split::Train, Split::Train, Split::Test, Split::Test];
        let targets: Vec<f32> = (0..4).flat_map(|s| [s as f32 * 10.0; 3]).collect();
        Staged::from_parts(
            Path::new("mem"),
            fmri,
            2,
            trial_stimulus,
            split,
            targets,
            3,
            "t",
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn averaged_rows_are_the_mean_of_repeats() {
        let l = Loader::new(
            staged(),
            LoaderConfig {
                batch_size: 8,
                ..LoaderConfig::test(8)
            },
        )
        .unwrap();
        let b = l.epoch(0).next().unwrap().unwrap();
        assert_eq!(b.stimuli, vec![2, 3]);
        // Stimulus 2: trials 2, 6, 9 → mean 17/3; stimulus 3: trials 3, 7 → 5.
        crate::testing::assert_close(
            &b.fmri.to_vec_f32().unwrap(),
            &[17.0 / 3.0, 17.0 / 3.0, 5.0, 5.0],
            1e-6,
            1e-6,
            "averages",
        );
        assert_eq!(
            b.target.to_vec_f32().unwrap(),
            vec![20.0, 20.0, 20.0, 30.0, 30.0, 30.0]
        );
    }

    #[test]
    fn trial_sampling_serves_every_trial_of_the_split_once() {
        let cfg = LoaderConfig {
            sampling: Sampling::Trials,
            batch_size: 2,
            ..LoaderConfig::train(2, 5)
        };
        let l = Loader::new(staged(), cfg).unwrap();
        let mut seen: Vec<u32> = l.epoch(3).flat_map(|b| b.unwrap().trials).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 4, 5, 8]);
        assert_eq!(l.batches(), 3);
    }

    #[test]
    fn single_trial_rows_are_real_trials_of_their_stimulus() {
        let cfg = LoaderConfig {
            sampling: Sampling::Stimuli {
                average_repeats: false,
            },
            ..LoaderConfig::train(1, 9)
        };
        let l = Loader::new(staged(), cfg).unwrap();
        for e in 0..5 {
            for b in l.epoch(e) {
                let b = b.unwrap();
                let row = b.fmri.to_vec_f32().unwrap();
                assert_eq!(row[0], b.trials[0] as f32);
                assert_eq!(
                    [0, 1, 2, 3, 0, 1, 2, 3, 0, 2][b.trials[0] as usize],
                    b.stimuli[0]
                );
            }
        }
    }

    #[test]
    fn drop_last_and_empty_batches() {
        let cfg = LoaderConfig {
            drop_last: true,
            ..LoaderConfig::train(3, 1)
        };
        assert!(
            Loader::new(staged(), cfg).is_err(),
            "2 train stimuli cannot fill a batch of 3"
        );
        assert!(Loader::new(staged(), LoaderConfig::train(0, 1)).is_err());
    }
}
