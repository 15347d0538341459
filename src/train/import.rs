//! The authors' checkpoints as mindreader's: Lafite/StyleGAN2-ADA network snapshots (`.pkl`) and
//! mapper `.pth` files, read through `crate::pickle` (as data, never executed) and rebuilt as
//! [`Network`]s and [`Mapper`]s, or written out as mindreader checkpoints (`convert`).
//!
//! The networks rebuild from the persistent `_init_kwargs` the snapshot records; a mapper's shape
//! is read off its weights (the stem's width, the residual blocks present, the projection and fc
//! widths). Its voxel count V is recorded by the fork's `FmriVecMapper` (`fmri_len`) but not by a
//! bare state_dict, whose fc layer only says ⌊V/2⌋: there it must be given.
//!
//! Tensors become float32 (the fork keeps its mappers in float64 during GAN training; they are
//! rounded to nearest, as `tensor.float()` does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::models::lafite::{Architecture, Discriminator, Generator, Network};
use crate::models::{Mapper, MapperConfig};
use crate::nn::{load_safetensors, save_safetensors, ParamStore};
use crate::pickle::{Checkpoint, Entry, RawTensor};
use crate::tensor::{Device, Tensor};
use crate::train::mapper::{mapper_config_from, mapper_metadata, RunDir};

/// Whether `path` is a pickle or a torch.save file (by its first bytes), not a safetensors file.
pub fn is_foreign(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| head[0] == 0x80 || head == *b"PK")
        .unwrap_or(false)
}

/// Keys under which `.pth` files commonly wrap a state_dict.
const STATE_DICT_KEYS: &[&str] = &["model", "state_dict", "model_state_dict", "net", "mapper"];

/// A network of a checkpoint as f32 host tensors.
fn host_tensors(ck: &mut Checkpoint, key: &str) -> Result<Vec<(String, Tensor)>> {
    let raw = ck.read_tensors(key)?;
    raw.into_iter()
        .map(|(name, t)| Ok((name, to_tensor(&t)?)))
        .collect()
}

fn to_tensor(t: &RawTensor) -> Result<Tensor> {
    Tensor::from_vec(t.to_f32(), &t.shape, &Device::Cpu)
}

/// Loads a Lafite network from a mindreader safetensors file, or from a snapshot `.pkl` (the
/// entry `key`, by default `G_ema` for a generator — the snapshot's inference weights — and `D`
/// for a discriminator).
pub fn load_network<N: Architecture>(
    path: &Path,
    key: Option<&str>,
    device: &Device,
) -> Result<Network<N>> {
    if !is_foreign(path) {
        return Network::load(path, device);
    }
    let mut ck = Checkpoint::open(path)?;
    let defaults: &[&str] = match N::CLASS {
        "Generator" => &["G_ema", "G", ""],
        _ => &["D", ""],
    };
    let key = match key {
        Some(k) => k.to_string(),
        None => defaults
            .iter()
            .find(|k| ck.entry(k).is_some())
            .map(|k| k.to_string())
            .ok_or_else(|| {
                Error::file(
                    path,
                    format!(
                        "holds no {} (looked for {}); entries: {}",
                        N::CLASS,
                        defaults[..defaults.len() - 1].join(", "),
                        entry_names(&ck)
                    ),
                )
            })?,
    };
    network_from(&mut ck, &key, device)
}

fn entry_names(ck: &Checkpoint) -> String {
    ck.entries
        .iter()
        .map(|e| e.key().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn network_from<N: Architecture>(
    ck: &mut Checkpoint,
    key: &str,
    device: &Device,
) -> Result<Network<N>> {
    let path = ck.file.path.clone();
    let (class, kwargs) = match ck.entry(key) {
        Some(Entry::Module {
            module,
            init_kwargs,
            ..
        }) => (module.class.clone(), init_kwargs.clone()),
        Some(_) => return Err(Error::file(&path, format!("`{key}` is not a network"))),
        None => {
            return Err(Error::file(
                &path,
                format!("holds no `{key}`; entries: {}", entry_names(ck)),
            ))
        }
    };
    let class = class.rsplit('.').next().unwrap_or(&class).to_string();
    if class != N::CLASS {
        return Err(Error::file(
            &path,
            format!("`{key}` is a {class}, expected a {}", N::CLASS),
        ));
    }
    let kwargs = kwargs.ok_or_else(|| {
        Error::file(
            &path,
            format!("`{key}` records no init_kwargs (not a persistent StyleGAN2-ADA class)"),
        )
    })?;
    let meta = BTreeMap::from([
        ("init_kwargs".to_string(), kwargs.to_string()),
        ("class".to_string(), class),
    ]);
    let tensors = host_tensors(ck, key)?;
    Network::from_tensors(tensors, &meta, &path.join(key), device)
}

/// A mapper and its parameters.
pub struct LoadedMapper {
    pub mapper: Mapper,
    pub store: ParamStore,
}

/// Loads a mapper from a train-mapper run directory, a mindreader safetensors file, a mapper
/// `.pth` (bare state_dict, or wrapped under `model`/`state_dict`/…) or a snapshot `.pkl` (entry
/// `key`, default `fmri_vec`). `voxels` is used where the file does not record the voxel count,
/// and must agree with it where it does.
pub fn load_mapper(
    path: &Path,
    key: Option<&str>,
    voxels: Option<usize>,
    device: &Device,
) -> Result<LoadedMapper> {
    let (config, tensors, source) = if is_foreign(path) {
        let mut ck = Checkpoint::open(path)?;
        let key = mapper_key(&ck, key)?;
        mapper_parts(&mut ck, &key, voxels)?
    } else {
        let weights = if path.is_dir() {
            RunDir(path.to_path_buf()).weights()
        } else {
            path.to_path_buf()
        };
        let (tensors, meta) = load_safetensors(&weights)?;
        let config = mapper_config_from(&meta, &weights)?;
        if let Some(v) = voxels.filter(|&v| v != config.voxels) {
            return Err(Error::file(
                &weights,
                format!("the mapper takes {} voxels, not {v}", config.voxels),
            ));
        }
        (config, tensors, weights)
    };
    build_mapper(config, tensors, &source, device)
}

/// The mapper in entry `key` of an open checkpoint: (its shape, its f32 tensors, the name errors
/// give it).
fn mapper_parts(
    ck: &mut Checkpoint,
    key: &str,
    voxels: Option<usize>,
) -> Result<(MapperConfig, Vec<(String, Tensor)>, PathBuf)> {
    let recorded = match ck.entry(key) {
        Some(Entry::Module {
            init_kwargs: Some(kw),
            ..
        }) => Some(kw.clone()),
        _ => None,
    };
    let tensors = host_tensors(ck, key)?;
    let path = &ck.file.path;
    let source = if key.is_empty() {
        path.to_path_buf()
    } else {
        path.join(key)
    };
    let config = mapper_config_of(&tensors, recorded.as_ref(), voxels, &source)?;
    Ok((config, tensors, source))
}

/// A mapper of `config` holding exactly `tensors`.
fn build_mapper(
    config: MapperConfig,
    tensors: Vec<(String, Tensor)>,
    source: &Path,
    device: &Device,
) -> Result<LoadedMapper> {
    let mut store = ParamStore::new();
    let mapper = Mapper::new(config, &mut store, 0, device)?;
    let rest = store.assign_from(tensors, "", source)?;
    if let Some((name, t)) = rest.first() {
        return Err(Error::file(
            source,
            format!(
                "tensor `{name}` {:?} is not part of Mind Reader's mapper (and {} more)",
                t.shape(),
                rest.len() - 1
            ),
        ));
    }
    Ok(LoadedMapper { mapper, store })
}

/// The entry holding the mapper: `key`, else the file's only state_dict or module, a common
/// wrapper key, or a snapshot's `fmri_vec`.
fn mapper_key(ck: &Checkpoint, key: Option<&str>) -> Result<String> {
    let path = &ck.file.path;
    if let Some(k) = key {
        return match ck.entry(k) {
            Some(e) if !e.tensors().is_empty() => Ok(k.to_string()),
            _ => Err(Error::file(
                path,
                format!(
                    "holds no module or state_dict `{k}`; entries: {}",
                    entry_names(ck)
                ),
            )),
        };
    }
    let with_tensors: Vec<&str> = ck
        .entries
        .iter()
        .filter(|e| !e.tensors().is_empty())
        .map(|e| e.key())
        .collect();
    if with_tensors.is_empty() {
        return Err(Error::file(
            path,
            format!(
                "holds no module or state_dict, so no mapper; its entries: {} (plain data)",
                entry_names(ck)
            ),
        ));
    }
    if with_tensors.len() == 1 {
        return Ok(with_tensors[0].to_string());
    }
    ["fmri_vec"]
        .iter()
        .chain(STATE_DICT_KEYS)
        .find(|k| with_tensors.contains(k))
        .map(|k| k.to_string())
        .ok_or_else(|| {
            Error::file(
                path,
                format!(
                    "which of its entries is the mapper? {} (pass the entry's name)",
                    with_tensors.join(", ")
                ),
            )
        })
}

/// The mapper's shape, read off its weights; V from `fmri_len` when recorded, else `voxels`.
fn mapper_config_of(
    tensors: &[(String, Tensor)],
    recorded: Option<&Json>,
    voxels: Option<usize>,
    source: &Path,
) -> Result<MapperConfig> {
    let shape = |name: &str| -> Result<Vec<usize>> {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shape().to_vec())
            .ok_or_else(|| {
                Error::file(
                    source,
                    format!("not a Mind Reader mapper: it has no `{name}` (an fmri_clip_res / FmriVecMapper state_dict has encoder.0.0, encoder.N.net.*, fc.1 and fc.3)"),
                )
            })
    };
    if let Some(kw) = recorded {
        for (key, default, why) in [
            ("num_layers", Json::from(1), "one stride-2 stem"),
            ("channels", Json::from(1), "one input channel"),
            ("last_activation", Json::from(false), "no final sigmoid"),
        ] {
            let v = kw.get(key).cloned().unwrap_or(default.clone());
            if v != default {
                return Err(Error::file(
                    source,
                    format!("{key} = {v}: mindreader's mapper has {why} (Mind Reader's setting)"),
                ));
            }
        }
    }
    let stem = shape("encoder.0.0.weight")?;
    let hidden = stem[0];
    let res_blocks = (1..)
        .take_while(|i| {
            tensors
                .iter()
                .any(|(n, _)| *n == format!("encoder.{i}.net.0.weight"))
        })
        .count();
    let proj = shape(&format!("encoder.{}.weight", res_blocks + 1))?;
    let fc1 = shape("fc.1.weight")?;
    let length = fc1.get(1).copied().unwrap_or(0);
    let from_file = recorded
        .and_then(|kw| kw.get("fmri_len"))
        .and_then(Json::as_u64)
        .map(|v| v as usize);
    let voxels = match (from_file, voxels) {
        (Some(f), Some(v)) if f != v => {
            return Err(Error::file(
                source,
                format!("the mapper was built for fmri_len = {f} voxels, not {v}"),
            ))
        }
        (Some(f), _) => f,
        (None, Some(v)) => v,
        (None, None) => {
            return Err(Error::file(
                source,
                format!(
                    "the voxel count is not recorded and the weights fit both {} and {} (fc.1 takes ⌊V/2⌋ = {length}): pass --voxels",
                    2 * length,
                    2 * length + 1
                ),
            ))
        }
    };
    let config = MapperConfig {
        voxels,
        hidden,
        fc_hidden: fc1[0],
        out_dim: proj[0],
        res_blocks,
    };
    if config.length() != length {
        return Err(Error::file(
            source,
            format!(
                "{voxels} voxels give a length of {} after the stem, but fc.1 takes {length}",
                config.length()
            ),
        ));
    }
    Ok(config)
}

/// Saves a mapper as a mindreader mapper checkpoint (what `predict` and `train-mapper
/// --resume-from` read).
pub fn save_mapper(m: &LoadedMapper, path: &Path, source: &Path) -> Result<()> {
    let mut meta = mapper_metadata(&m.mapper.config);
    meta.insert("converted_from".into(), source.display().to_string());
    let all: Vec<(String, Tensor)> = m
        .store
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    save_safetensors(path, &all, &meta)
}

/// One file `convert` wrote.
pub struct Converted {
    pub key: String,
    pub what: String,
    pub path: PathBuf,
}

/// Converts every network and mapper of `input` into `out`, plus `snapshot.json` with the plain
/// data (a snapshot's `args`, `training_set_kwargs`). Entries it cannot use are listed in the
/// returned notes.
pub fn convert(
    input: &Path,
    out: &Path,
    voxels: Option<usize>,
) -> Result<(Vec<Converted>, Vec<String>)> {
    let mut ck = Checkpoint::open(input)?;
    std::fs::create_dir_all(out)
        .map_err(|e| Error::file(out, format!("creating the output directory: {e}")))?;
    let mut done = Vec::new();
    let mut notes = Vec::new();
    let mut data = serde_json::Map::new();
    let entries: Vec<(String, Option<String>, bool)> = ck
        .entries
        .iter()
        .map(|e| match e {
            Entry::Module { key, module, .. } => (key.clone(), Some(module.class.clone()), false),
            Entry::StateDict { key, .. } => (key.clone(), None, false),
            Entry::Data { key, .. } => (key.clone(), None, true),
        })
        .collect();
    for (key, class, is_data) in entries {
        if is_data {
            if let Some(Entry::Data { value, .. }) = ck.entry(&key) {
                data.insert(key.clone(), value.clone());
            }
            continue;
        }
        let short = class
            .as_deref()
            .map(|c| c.rsplit('.').next().unwrap_or(c).to_string());
        let name = if key.is_empty() { "mapper" } else { &key };
        let path = out.join(format!("{name}.safetensors"));
        match short.as_deref() {
            Some("Generator") => {
                network_from::<Generator>(&mut ck, &key, &Device::Cpu)?.save(&path)?;
                done.push(Converted {
                    key,
                    what: "Lafite generator".into(),
                    path,
                });
            }
            Some("Discriminator") => {
                network_from::<Discriminator>(&mut ck, &key, &Device::Cpu)?.save(&path)?;
                done.push(Converted {
                    key,
                    what: "Lafite discriminator".into(),
                    path,
                });
            }
            _ => {
                let is_mapper = ck
                    .entry(&key)
                    .is_some_and(|e| e.tensors().iter().any(|(n, _)| n == "encoder.0.0.weight"));
                if !is_mapper {
                    notes.push(format!(
                        "`{key}` ({}) is not a network mindreader knows: not converted",
                        class.unwrap_or_else(|| "a state_dict".into())
                    ));
                    continue;
                }
                let (config, tensors, source) = mapper_parts(&mut ck, &key, voxels)?;
                let m = build_mapper(config, tensors, &source, &Device::Cpu)?;
                save_mapper(&m, &path, input)?;
                let c = m.mapper.config;
                done.push(Converted {
                    key,
                    what: format!("Mind Reader mapper ({} voxels → {}-d)", c.voxels, c.out_dim),
                    path,
                });
            }
        }
    }
    if done.is_empty() {
        return Err(Error::file(
            input,
            format!(
                "holds no network or mapper to convert; entries: {}",
                entry_names(&ck)
            ),
        ));
    }
    if !data.is_empty() {
        let path = out.join("snapshot.json");
        let text = serde_json::to_string_pretty(&Json::Object(data))
            .map_err(|e| Error::Invalid(format!("snapshot.json: {e}")))?;
        crate::fsio::write_atomic(&path, text.as_bytes())?;
        done.push(Converted {
            key: "(data)".into(),
            what: "the snapshot's plain data (args, training_set_kwargs, …)".into(),
            path,
        });
    }
    Ok((done, notes))
}
