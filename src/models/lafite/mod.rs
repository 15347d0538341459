//! Lafite (Zhou et al. 2022) as Mind Reader trains it: a CLIP-conditioned StyleGAN2 generator and a
//! three-head discriminator, read from the mind-reader fork's `StyleGAN2/training/networks.py`.
//!
//! - `config.rs`: the shapes, from the reference constructors' keyword arguments;
//! - `generator.rs`: mapping network, synthesis blocks (skip architecture), conditioning
//!   structures 2 and 4, truncation and noise modes;
//! - `discriminator.rs`: resnet blocks, the minibatch-stddev epilogue, the logit and the semantic
//!   heads.
//!
//! A checkpoint is one safetensors file holding every parameter and buffer under the fork's
//! state_dict names, with metadata `init_kwargs` (the constructor's keyword arguments as JSON),
//! `class` (`Generator` or `Discriminator`) and `format` (`mindreader-lafite-v1`), so a network
//! converted from the reference loads with no other information.

pub mod config;
pub mod discriminator;
pub mod generator;

use std::collections::BTreeMap;
use std::path::Path;

pub use config::{DiscriminatorConfig, GeneratorConfig};
pub use discriminator::{Discriminator, DiscriminatorOutput};
pub use generator::Generator;

use crate::error::{Error, Result};
use crate::nn::{load_safetensors, save_safetensors, ParamStore, Params};
use crate::tensor::{Device, Tensor};

/// The `format` a Lafite checkpoint's metadata carries.
pub const FORMAT: &str = "mindreader-lafite-v1";

/// A network and the stores its tensors live in: trainable parameters and fixed buffers.
pub struct Network<N> {
    pub net: N,
    pub params: ParamStore,
    pub buffers: ParamStore,
}

/// What the two networks have in common for building, loading and saving.
pub trait Architecture: Sized {
    type Config: Clone;
    const CLASS: &'static str;
    fn config_from(init_kwargs: &serde_json::Value) -> Result<Self::Config>;
    fn init_kwargs(config: &Self::Config) -> &serde_json::Value;
    fn config(&self) -> &Self::Config;
    fn build(p: &mut Params, config: Self::Config) -> Result<Self>;
}

impl Architecture for Generator {
    type Config = GeneratorConfig;
    const CLASS: &'static str = "Generator";
    fn config_from(v: &serde_json::Value) -> Result<GeneratorConfig> {
        GeneratorConfig::from_init_kwargs(v)
    }
    fn init_kwargs(c: &GeneratorConfig) -> &serde_json::Value {
        &c.init_kwargs
    }
    fn config(&self) -> &GeneratorConfig {
        &self.config
    }
    fn build(p: &mut Params, c: GeneratorConfig) -> Result<Generator> {
        Generator::new(p, c)
    }
}

impl Architecture for Discriminator {
    type Config = DiscriminatorConfig;
    const CLASS: &'static str = "Discriminator";
    fn config_from(v: &serde_json::Value) -> Result<DiscriminatorConfig> {
        DiscriminatorConfig::from_init_kwargs(v)
    }
    fn init_kwargs(c: &DiscriminatorConfig) -> &serde_json::Value {
        &c.init_kwargs
    }
    fn config(&self) -> &DiscriminatorConfig {
        &self.config
    }
    fn build(p: &mut Params, c: DiscriminatorConfig) -> Result<Discriminator> {
        Discriminator::new(p, c)
    }
}

impl<N: Architecture> Network<N> {
    /// A fresh network: the reference's initialisation drawn from `seed` (per tensor name), or
    /// zeros when `seed` is None (to be filled by a checkpoint).
    pub fn new(config: N::Config, seed: Option<u64>, device: &Device) -> Result<Network<N>> {
        let (mut params, mut buffers) = (ParamStore::new(), ParamStore::new());
        let mut p = Params {
            store: &mut params,
            buffers: Some(&mut buffers),
            device,
            seed,
        };
        let net = N::build(&mut p, config)?;
        Ok(Network {
            net,
            params,
            buffers,
        })
    }

    /// Loads a checkpoint: its `init_kwargs` decide the architecture, then every parameter and
    /// buffer must be present with its shape, and nothing else may be.
    pub fn load(path: &Path, device: &Device) -> Result<Network<N>> {
        let (tensors, meta) = load_safetensors(path)?;
        Self::from_tensors(tensors, &meta, path, device)
    }

    /// `load` from tensors already read (`source` names the file in errors).
    pub fn from_tensors(
        tensors: Vec<(String, Tensor)>,
        meta: &BTreeMap<String, String>,
        source: &Path,
        device: &Device,
    ) -> Result<Network<N>> {
        if let Some(class) = meta.get("class") {
            if class != N::CLASS {
                return Err(Error::file(
                    source,
                    format!("holds a {class}, expected a {}", N::CLASS),
                ));
            }
        }
        let kwargs = meta.get("init_kwargs").ok_or_else(|| {
            Error::file(
                source,
                format!(
                    "no `init_kwargs` in the metadata: a {} checkpoint records the reference constructor's keyword arguments",
                    N::CLASS
                ),
            )
        })?;
        let kwargs: serde_json::Value = serde_json::from_str(kwargs)
            .map_err(|e| Error::file(source, format!("init_kwargs is not JSON: {e}")))?;
        let config = N::config_from(&kwargs).map_err(|e| Error::file(source, e.to_string()))?;
        let mut net = Network::<N>::new(config, None, device)?;
        let rest = net.params.assign_from(tensors, "", source)?;
        let rest = net.buffers.assign_from(rest, "", source)?;
        if let Some((name, t)) = rest.first() {
            return Err(Error::file(
                source,
                format!(
                    "tensor `{name}` {:?} is not part of this {} (and {} more): the checkpoint does not match its init_kwargs",
                    t.shape(),
                    N::CLASS,
                    rest.len() - 1
                ),
            ));
        }
        Ok(net)
    }

    /// Writes every parameter and buffer with the metadata `load` needs, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let all: Vec<(String, Tensor)> = self
            .params
            .iter()
            .chain(self.buffers.iter())
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        let meta = BTreeMap::from([
            (
                "init_kwargs".to_string(),
                N::init_kwargs(self.net.config()).to_string(),
            ),
            ("class".to_string(), N::CLASS.to_string()),
            ("format".to_string(), FORMAT.to_string()),
        ]);
        save_safetensors(path, &all, &meta)
    }
}

impl<N: Architecture> Network<N> {
    pub fn config(&self) -> &N::Config {
        self.net.config()
    }
}
