//! Datasets: the prepared HDF5 format ([`dataset`]), the simulated-brain synthetic world
//! ([`synth`]), mini-batching ([`loader`]), contact sheets of stimuli ([`sheet`], drawn with
//! the built-in [`font`]) and NSD ingestion ([`nsd`]). Schema reference: `docs/dataset.md`.

pub mod dataset;
pub mod font;
pub mod loader;
pub mod nsd;
pub mod sheet;
pub mod synth;

pub use dataset::{
    AuxArray, AuxData, Contents, DatasetFile, Meta, Source, Split, Summary, Target, SCHEMA_VERSION,
};
pub use loader::{Batch, Loader, LoaderConfig, Sampling, Staged};
pub use synth::SynthConfig;
