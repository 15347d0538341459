//! Mind Reader's second stage: the CLIP-conditioned Lafite generator trained on conditions
//! mapped from fMRI (the mind-reader fork's `training/loss.py` and `training_loop.py`).
//!
//! - `loss.rs`: the contrastive terms, the condition perturbation, style mixing, CLIP's view of
//!   a generated image (`full_preprocess`), Gmain and Dmain;
//! - `regularize.rs`: R1 and path length (second order, by finite-difference Hessian–vector
//!   products);
//! - `ema.rs`: G_ema, `nan_to_num`, `w_avg`;
//! - `phase.rs`: each phase as host draws and a device half, and the phases as CUDA graphs;
//! - `trainer.rs`: the phases Gmain, Greg (every 4), Dmain, Dreg (every 16), Adam with the
//!   lazy-regularisation rescaling, snapshots, checkpoints and a bit-for-bit resume.
//!
//! The mappers are frozen and run once on the fMRI, as Mind Reader trains (its end-to-end mapper
//! phases sit behind `if False:`): the conditions are data here.

pub mod ema;
pub mod loss;
pub mod phase;
pub mod regularize;
pub mod trainer;

pub use loss::{GanLossConfig, Nets};
pub use trainer::{train_gan, GanConfig, GanData, GanRunDir, StepReport};
