//! Named parameters and their accumulated gradients; safetensors save/load.
//!
//! Names follow the PyTorch state_dict of the reference model, so a converted checkpoint loads by
//! name. Saving writes a temp file beside the target and renames it: a killed process never
//! leaves a half-written checkpoint under the real name.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::{Dtype as StDtype, TensorView};

use crate::autograd::{Gradients, Tape};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::tensor::{DType, Device, Storage, Tensor};

/// Named tensors and a file's metadata, as a safetensors file holds them.
pub type Loaded = (Vec<(String, Tensor)>, BTreeMap<String, String>);

pub struct Param {
    pub name: String,
    pub value: Tensor,
    /// Σ of the gradients accumulated since the last `zero_grad`.
    pub grad: Option<Tensor>,
}

#[derive(Default)]
pub struct ParamStore {
    params: Vec<Param>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// Adds a parameter under a unique name and returns its tensor (a shared handle).
    pub fn insert(&mut self, name: &str, value: Tensor) -> Result<Tensor> {
        if self.index.contains_key(name) {
            return Err(Error::Invalid(format!("parameter `{name}` defined twice")));
        }
        self.index.insert(name.to_string(), self.params.len());
        self.params.push(Param {
            name: name.to_string(),
            value: value.clone(),
            grad: None,
        });
        Ok(value)
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.index
            .get(name)
            .map(|&i| &self.params[i].value)
            .ok_or_else(|| Error::Invalid(format!("no parameter named `{name}`")))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.params.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.params.iter().map(|p| p.value.numel()).sum()
    }

    /// Watches every parameter on the tape so that `backward` returns their gradients.
    pub fn watch_all(&self, tape: &mut Tape) {
        for p in &self.params {
            tape.watch(&p.value);
        }
    }

    /// Adds this step's gradients to the accumulated ones (gradient accumulation across calls).
    pub fn accumulate(&mut self, grads: &Gradients) -> Result<()> {
        for p in &mut self.params {
            if let Some(g) = grads.get(&p.value) {
                p.grad = Some(match p.grad.take() {
                    Some(prev) => prev.accumulate(g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.grad = None;
        }
    }

    /// Writes every parameter (plus `extra` tensors, e.g. optimiser state) to a safetensors file,
    /// atomically.
    pub fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor)],
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        let mut all: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        all.extend(extra.iter().cloned());
        save_safetensors(path, &all, metadata)
    }

    /// Copies values from a safetensors file into the existing parameters, in place (handles held
    /// by models stay valid). Every parameter must be present with the same shape; tensors in the
    /// file that are not parameters are returned (optimiser state) along with the metadata.
    pub fn load(&mut self, path: &Path) -> Result<Loaded> {
        let (tensors, metadata) = load_safetensors(path)?;
        let rest = self.assign_from(tensors, "", path)?;
        Ok((rest, metadata))
    }

    /// Converts every parameter to `dtype` in place: every handle to a parameter (a model's
    /// fields) sees the new storage. Gradients are dropped.
    pub fn convert(&mut self, dtype: DType) -> Result<()> {
        for p in &mut self.params {
            if p.value.dtype() != dtype {
                p.value.set_storage_from(p.value.to_dtype(dtype)?)?;
            }
            p.grad = None;
        }
        Ok(())
    }

    /// Assigns every parameter from `tensors` named `<prefix><parameter name>` (in place), and
    /// returns the tensors that were not used. `source` names where they came from in errors.
    pub fn assign_from(
        &mut self,
        mut tensors: Vec<(String, Tensor)>,
        prefix: &str,
        source: &Path,
    ) -> Result<Vec<(String, Tensor)>> {
        for p in &self.params {
            let want = format!("{prefix}{}", p.name);
            let Some(pos) = tensors.iter().position(|(n, _)| *n == want) else {
                return Err(Error::file(
                    source,
                    format!(
                        "missing tensor `{want}` (expected shape {:?})",
                        p.value.shape()
                    ),
                ));
            };
            let (_, t) = tensors.swap_remove(pos);
            if t.shape() != p.value.shape() {
                return Err(Error::file(
                    source,
                    format!(
                        "tensor `{want}` has shape {:?}, expected {:?}",
                        t.shape(),
                        p.value.shape()
                    ),
                ));
            }
            p.value
                .set_storage_from(t.to_dtype(p.value.dtype())?.to_device(p.value.device())?)?;
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tensors)
    }
}

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
    }
}

/// Writes named tensors (any device, f32/bf16/f16) to `path` via a temp file and rename.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut bytes: Vec<(String, DType, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let host = t.to_device(&Device::Cpu)?;
        let s = host.storage();
        let raw = match &*s {
            Storage::CpuF32(v) => bytemuck::cast_slice(v).to_vec(),
            Storage::CpuBF16(v) => bytemuck::cast_slice(v).to_vec(),
            Storage::CpuF16(v) => bytemuck::cast_slice(v).to_vec(),
            _ => return Err(Error::Invalid("host copy is not on the host".into())),
        };
        bytes.push((name.clone(), t.dtype(), t.shape().to_vec(), raw));
    }
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, d, shape, raw)| {
            TensorView::new(st_dtype(*d), shape.clone(), raw).map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::file(path, format!("building safetensors: {e}")))?;
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let data = safetensors::serialize(views, &Some(meta))
        .map_err(|e| Error::file(path, format!("serialising: {e}")))?;
    write_atomic(path, &data)
}

/// Reads every tensor of a safetensors file onto the host (f32, bf16 and f16; other dtypes are
/// an error naming the tensor), with the file's metadata.
pub fn load_safetensors(path: &Path) -> Result<Loaded> {
    let data = std::fs::read(path).map_err(|e| Error::file(path, format!("reading: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&data)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&data)
        .map_err(|e| Error::file(path, format!("bad header: {e}")))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let storage = match view.dtype() {
            StDtype::F32 => Storage::CpuF32(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            StDtype::BF16 => Storage::CpuBF16(
                raw.chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            StDtype::F16 => Storage::CpuF16(
                raw.chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            other => {
                return Err(Error::file(
                    path,
                    format!(
                        "tensor `{name}` has dtype {other:?}; only F32, BF16 and F16 are supported"
                    ),
                ))
            }
        };
        out.push((
            name,
            Tensor::from_storage(storage, view.shape(), &Device::Cpu),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_vec;

    fn store() -> ParamStore {
        let mut s = ParamStore::new();
        s.insert(
            "conv.weight",
            Tensor::from_vec(random_vec(12, 1), &[4, 3], &Device::Cpu).unwrap(),
        )
        .unwrap();
        s.insert(
            "conv.bias",
            Tensor::from_vec(random_vec(4, 2), &[4], &Device::Cpu).unwrap(),
        )
        .unwrap();
        s
    }

    #[test]
    fn save_then_load_restores_values_in_place() {
        let dir = std::env::temp_dir().join(format!("mindreader-params-{}", std::process::id()));
        let path = dir.join("ckpt.safetensors");
        let a = store();
        let extra = vec![(
            "adam.m.conv.bias".to_string(),
            Tensor::full(0.5, &[4], &Device::Cpu).unwrap(),
        )];
        let meta = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
        a.save(&path, &extra, &meta).unwrap();
        let mut b = ParamStore::new();
        let handle = b
            .insert("conv.weight", Tensor::zeros(&[4, 3], &Device::Cpu).unwrap())
            .unwrap();
        b.insert("conv.bias", Tensor::zeros(&[4], &Device::Cpu).unwrap())
            .unwrap();
        let (rest, meta2) = b.load(&path).unwrap();
        assert_eq!(
            handle.to_vec_f32().unwrap(),
            a.get("conv.weight").unwrap().to_vec_f32().unwrap()
        );
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, "adam.m.conv.bias");
        assert_eq!(meta2.get("epoch").map(String::as_str), Some("3"));
        assert!(!path.with_extension("safetensors.tmp").exists());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn load_names_the_missing_or_misshapen_tensor() {
        let dir =
            std::env::temp_dir().join(format!("mindreader-params-bad-{}", std::process::id()));
        let path = dir.join("ckpt.safetensors");
        store().save(&path, &[], &BTreeMap::new()).unwrap();
        let mut wrong = ParamStore::new();
        wrong
            .insert("conv.weight", Tensor::zeros(&[3, 4], &Device::Cpu).unwrap())
            .unwrap();
        let err = wrong.load(&path).unwrap_err().to_string();
        assert!(
            err.contains("conv.weight") && err.contains("[4, 3]"),
            "{err}"
        );
        let mut missing = ParamStore::new();
        missing
            .insert("fc.weight", Tensor::zeros(&[1], &Device::Cpu).unwrap())
            .unwrap();
        let err = missing.load(&path).unwrap_err().to_string();
        assert!(
            err.contains("missing tensor `fc.weight`") && err.contains("ckpt.safetensors"),
            "{err}"
        );
        std::fs::write(&path, b"not a safetensors file").unwrap();
        assert!(store()
            .load(&path)
            .unwrap_err()
            .to_string()
            .contains("not a valid safetensors"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn gradients_accumulate_across_backward_calls() {
        let mut s = store();
        for _ in 0..2 {
            let mut tape = Tape::new();
            s.watch_all(&mut tape);
            let w = s.get("conv.bias").unwrap().clone();
            let loss = crate::ops::reduce::sum_all(&mut tape, &w).unwrap();
            let g = tape.backward(&loss).unwrap();
            s.accumulate(&g).unwrap();
        }
        let p = s.iter().find(|p| p.name == "conv.bias").unwrap();
        assert_eq!(p.grad.as_ref().unwrap().to_vec_f32().unwrap(), vec![2.0; 4]);
        s.zero_grad();
        assert!(s.iter().all(|p| p.grad.is_none()));
    }
}
