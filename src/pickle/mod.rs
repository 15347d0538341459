//! The field's checkpoints without Python: StyleGAN2-ADA/Lafite network snapshots (`.pkl`) and
//! PyTorch `.pth` files, read as data and never executed.
//!
//! Three layers, each over the one before: [`machine`] runs the pickle opcodes into an inert
//! tree; [`torch`] knows torch's containers (zip, legacy stream, storage blobs) and its tensor
//! rebuilds; [`module`] reads `nn.Module`s (state_dicts, persistent `init_kwargs`). This layer
//! uses nothing of the engine, so a file can be listed (`mindreader info`) without a device;
//! `train::import` turns what it finds into mindreader's networks and mapper checkpoints.

pub mod machine;
pub mod module;
pub mod torch;

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
pub use machine::Value;
pub use module::ModuleRef;
pub use torch::{Container, DType, RawTensor, TorchFile};

/// One top-level thing a checkpoint holds.
#[derive(Debug)]
pub enum Entry {
    /// A module: its class, persistent `init_kwargs` when recorded, and its state_dict.
    Module {
        key: String,
        module: ModuleRef,
        init_kwargs: Option<Json>,
        tensors: Vec<(String, Value)>,
    },
    /// A bare state_dict (what `torch.save(model.state_dict())` writes).
    StateDict {
        key: String,
        tensors: Vec<(String, Value)>,
    },
    /// Plain data (a snapshot's `args`, `training_set_kwargs`, an epoch number).
    Data { key: String, value: Json },
}

impl Entry {
    pub fn key(&self) -> &str {
        match self {
            Entry::Module { key, .. } | Entry::StateDict { key, .. } | Entry::Data { key, .. } => {
                key
            }
        }
    }
    pub fn tensors(&self) -> &[(String, Value)] {
        match self {
            Entry::Module { tensors, .. } | Entry::StateDict { tensors, .. } => tensors,
            Entry::Data { .. } => &[],
        }
    }
}

/// A checkpoint file opened and listed.
pub struct Checkpoint {
    pub file: TorchFile,
    pub entries: Vec<Entry>,
}

impl Checkpoint {
    /// Opens `path` and lists what it holds; every error names the file.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let file = TorchFile::open(path).map_err(|e| Error::file(path, e))?;
        let entries = entries(&file).map_err(|e| Error::file(path, e))?;
        Ok(Checkpoint { file, entries })
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key() == key)
    }

    /// Reads every tensor of `entry` (state_dict order).
    pub fn read_tensors(&mut self, key: &str) -> Result<Vec<(String, RawTensor)>> {
        let path = self.file.path.clone();
        let names: Vec<(String, Value)> = self
            .entry(key)
            .ok_or_else(|| Error::file(&path, format!("holds no `{key}`")))?
            .tensors()
            .to_vec();
        let mut out = Vec::with_capacity(names.len());
        for (name, v) in names {
            let prefix = if key.is_empty() {
                String::new()
            } else {
                format!("{key}: ")
            };
            let t = self
                .file
                .tensor(v)
                .map_err(|e| Error::file(&path, format!("{prefix}tensor `{name}`: {e}")))?;
            out.push((name, t));
        }
        Ok(out)
    }
}

/// The top level: a module, a bare state_dict, or a dict of those and plain data.
fn entries(f: &TorchFile) -> std::result::Result<Vec<Entry>, String> {
    let p = &f.pickle;
    if let Some(m) = module::as_module(p, p.root) {
        return Ok(vec![module_entry(f, String::new(), m)?]);
    }
    let items = module::dict_items(p, p.root).ok_or_else(|| {
        format!(
            "the file holds {}; expected a module, a state_dict or a dict of them",
            p.describe(p.root)
        )
    })?;
    if items
        .iter()
        .all(|&(k, v)| p.str(k).is_some() && f.is_tensor(v))
    {
        return Ok(vec![state_dict_entry(f, String::new(), items)]);
    }
    let mut out = Vec::new();
    for &(k, v) in items {
        let key = match (p.str(k), k) {
            (Some(s), _) => s.to_string(),
            (None, Value::Int(i)) => i.to_string(),
            _ => return Err(format!("a top-level key is {}", p.describe(k))),
        };
        if let Some(m) = module::as_module(p, v) {
            out.push(module_entry(f, key, m)?);
        } else if let Some(sd) = module::dict_items(p, v).filter(|d| {
            !d.is_empty() && d.iter().all(|&(k, x)| p.str(k).is_some() && f.is_tensor(x))
        }) {
            out.push(state_dict_entry(f, key, sd));
        } else if f.is_tensor(v) {
            out.push(Entry::StateDict {
                key: key.clone(),
                tensors: vec![(key, v)],
            });
        } else {
            let value =
                module::to_json(p, v, module::Strict::No).map_err(|e| format!("`{key}`: {e}"))?;
            out.push(Entry::Data { key, value });
        }
    }
    Ok(out)
}

fn module_entry(f: &TorchFile, key: String, m: ModuleRef) -> std::result::Result<Entry, String> {
    let at = |e: String| {
        if key.is_empty() {
            e
        } else {
            format!("`{key}` ({}): {e}", m.class)
        }
    };
    let tensors = module::state_dict(f, &m).map_err(at)?;
    let init_kwargs = module::init_kwargs(&f.pickle, &m).map_err(at)?;
    Ok(Entry::Module {
        key,
        module: m,
        init_kwargs,
        tensors,
    })
}

fn state_dict_entry(f: &TorchFile, key: String, items: &[(Value, Value)]) -> Entry {
    let p = &f.pickle;
    let tensors = items
        .iter()
        .map(|&(k, v)| (p.str(k).unwrap_or_default().to_string(), v))
        .collect();
    Entry::StateDict { key, tensors }
}
