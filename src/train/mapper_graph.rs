//! A whole mapper training step (gather, forward, loss, backward, Adam, the running loss) as one
//! CUDA graph, captured once and replayed for every full batch: one `cuGraphLaunch` instead of
//! a launch per kernel, and no host work between the kernels of a step.
//!
//! What changes from step to step is staged in device buffers before each replay, never baked
//! into the graph: the batch's fMRI rows and target rows (`ids`), and Adam's rate and bias
//! corrections (`StagedAdam`). The running loss is added into a tensor that outlives the graph.
//! Everything else the step allocates is allocated and freed inside it (graph memory nodes), so
//! a replay leaves nothing behind. A replay runs the same kernels on the same values as an
//! ordinary step, so training is the same bit for bit either way (`tests` below).

use std::sync::Arc;

use cudarc::driver::{CudaGraph, CudaSlice};

use super::mapper::{add_weighted_loss, MapperData, TrainConfig};
use crate::autograd::Tape;
use crate::error::{Error, Result};
use crate::models::Mapper;
use crate::nn::ParamStore;
use crate::ops::embedding::gather_rows_staged;
use crate::tensor::{Gpu, Tensor};
use crate::train::adam::StagedAdam;
use crate::train::Adam;

pub(super) struct StepGraph {
    graph: CudaGraph,
    gpu: Arc<Gpu>,
    fmri_ids: CudaSlice<u32>,
    target_ids: CudaSlice<u32>,
    adam: StagedAdam,
    batch: usize,
    /// The tables and the total the graph reads and writes, held so that they outlive it. The
    /// parameters and Adam's moments are the caller's to keep in place while it replays.
    _buffers: [Tensor; 3],
}

impl StepGraph {
    /// Records one step of `cfg.batch` rows. Call it after an ordinary step has run (Adam's
    /// moments, the loaded kernels and `total` exist); `targets` is the table the target rows
    /// index (the data's targets, or its augmented views).
    #[allow(clippy::too_many_arguments)]
    pub fn capture(
        gpu: &Arc<Gpu>,
        mapper: &Mapper,
        store: &mut ParamStore,
        adam: &mut Adam,
        cfg: &TrainConfig,
        data: &MapperData,
        targets: &Tensor,
        total: &Tensor,
    ) -> Result<StepGraph> {
        let batch = cfg.batch;
        let fmri_ids = gpu.zeros::<u32>(batch)?;
        let target_ids = gpu.zeros::<u32>(batch)?;
        let mut staged = StagedAdam::new(gpu, store.iter().count())?;
        let (graph, ()) = gpu.capture(|| {
            let mut tape = Tape::new();
            store.watch_all(&mut tape);
            let x = gather_rows_staged(&data.fmri, &fmri_ids, batch)?;
            let t = gather_rows_staged(targets, &target_ids, batch)?;
            let y = mapper.forward(&mut tape, &x)?;
            let l = cfg.loss.compute(&mut tape, &y, &t, &cfg.loss_cfg)?;
            let grads = tape.backward(&l)?;
            store.accumulate(&grads)?;
            let updated = adam.record_staged(store, &mut staged);
            store.zero_grad();
            updated?;
            add_weighted_loss(total, &l, batch)
        })?;
        staged.flush()?;
        Ok(StepGraph {
            graph,
            gpu: gpu.clone(),
            fmri_ids,
            target_ids,
            adam: staged,
            batch,
            _buffers: [data.fmri.clone(), targets.clone(), total.clone()],
        })
    }

    /// Stages the batch (`rows` of the fMRI, `target_rows` of the target table, each checked
    /// against its table by the caller) and this step's Adam values, then replays the step.
    pub fn run(
        &mut self,
        rows: &[u32],
        target_rows: &[u32],
        adam: &mut Adam,
        lr: f32,
    ) -> Result<()> {
        if rows.len() != self.batch || target_rows.len() != self.batch {
            return Err(Error::Invalid(format!(
                "a step graph of batch {} was given {} rows and {} target rows",
                self.batch,
                rows.len(),
                target_rows.len()
            )));
        }
        let s = &self.gpu.stream;
        s.memcpy_htod(rows, &mut self.fmri_ids)
            .and_then(|_| s.memcpy_htod(target_rows, &mut self.target_ids))
            .map_err(|e| Error::cuda("staging a batch for the step graph", e))?;
        self.adam.stage(adam, lr)?;
        self.graph
            .launch()
            .map_err(|e| Error::cuda("replaying the step graph", e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::mapper::tests::{config, temp_dir, toy, weights};
    use super::super::mapper::{train, TrainConfig};
    use crate::testing::gpu_own_stream;

    /// On a GPU no training step waits for the device, replayed or op by op: the running loss
    /// stays there until the epoch's end. Counts the device-to-host copies between the reports
    /// of an epoch's second and last steps.
    #[test]
    fn mapper_steps_on_the_gpu_read_nothing_back() {
        use crate::train::mapper::Progress;
        let Some(dev) = gpu_own_stream() else { return };
        struct Syncs(Vec<u64>);
        impl Progress for Syncs {
            fn on_step(&mut self, _: usize, _: usize, _: usize, loss: Option<f32>) -> bool {
                assert!(loss.is_none(), "a loss read back inside the epoch");
                self.0.push(crate::tensor::downloads());
                true
            }
        }
        let mut data = toy(70, 24, 6);
        data.fmri = data.fmri.to_device(&dev).unwrap();
        data.targets = data.targets.to_device(&dev).unwrap();
        for cuda_graphs in [true, false] {
            let cfg = TrainConfig {
                cuda_graphs,
                ..config(1)
            };
            let dir = temp_dir(&format!("syncs-{cuda_graphs}"));
            let mut syncs = Syncs(Vec::new());
            train(&cfg, &data, &dir, false, &dev, &mut syncs).unwrap();
            let n = syncs.0.len();
            assert!(n >= 4, "{n} steps");
            assert_eq!(
                syncs.0[n - 1],
                syncs.0[1],
                "copies in steps 2..{n} (graphs {cuda_graphs})"
            );
            std::fs::remove_dir_all(&dir.0).ok();
        }
    }

    #[test]
    fn replaying_the_step_graph_trains_bit_for_bit_like_op_by_op_steps() {
        let Some(dev) = gpu_own_stream() else { return };
        let mut data = toy(70, 24, 6);
        data.fmri = data.fmri.to_device(&dev).unwrap();
        data.targets = data.targets.to_device(&dev).unwrap();
        // 60 training rows in batches of 8: seven full batches replay the graph (in the first
        // epoch six: its first step runs op by op, then the capture), the last 4 rows do not.
        let cfg = config(3);
        let eager_cfg = TrainConfig {
            cuda_graphs: false,
            ..cfg.clone()
        };
        let (dg, de) = (temp_dir("graph"), temp_dir("graph-eager"));
        let (_, graph_store, graph_run) = train(&cfg, &data, &dg, false, &dev, &mut ()).unwrap();
        let (_, eager_store, eager_run) =
            train(&eager_cfg, &data, &de, false, &dev, &mut ()).unwrap();
        let steps: Vec<usize> = graph_run.iter().map(|m| m.graph_steps).collect();
        assert_eq!(steps, [6, 7, 7]);
        assert!(eager_run.iter().all(|m| m.graph_steps == 0));
        for (g, e) in graph_run.iter().zip(&eager_run) {
            assert_eq!(g.train_loss.to_bits(), e.train_loss.to_bits());
            assert_eq!(g.val_loss.to_bits(), e.val_loss.to_bits());
        }
        let (wg, we) = (weights(&graph_store), weights(&eager_store));
        assert!(
            wg.iter().zip(&we).all(|(a, b)| a.to_bits() == b.to_bits()),
            "weights differ"
        );
        // The same run trained: the loss fell.
        assert!(graph_run[2].train_loss < graph_run[0].train_loss);
        // A run resumed from the graph run's checkpoint continues as the uninterrupted one.
        let longer = TrainConfig { epochs: 4, ..cfg };
        let (_, resumed, _) = train(&longer, &data, &dg, true, &dev, &mut ()).unwrap();
        let (_, straight, _) = train(
            &TrainConfig {
                cuda_graphs: false,
                ..longer
            },
            &data,
            &de,
            true,
            &dev,
            &mut (),
        )
        .unwrap();
        assert_eq!(weights(&resumed), weights(&straight));
        std::fs::remove_dir_all(&dg.0).ok();
        std::fs::remove_dir_all(&de.0).ok();
    }
}
