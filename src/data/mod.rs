//! Datasets: the prepared HDF5 format ([`dataset`]), the simulated-brain synthetic world
//! ([`synth`]) and mini-batching ([`loader`]). Schema reference: `docs/dataset.md`.

pub mod dataset;
pub mod loader;
pub mod rng;
pub mod synth;

pub use dataset::{AuxArray, AuxData, Contents, DatasetFile, Meta, Source, Split, Summary, Target, SCHEMA_VERSION};
pub use loader::{Batch, Loader, LoaderConfig, Sampling, Staged};
pub use synth::SynthConfig;
