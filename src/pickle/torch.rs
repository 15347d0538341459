//! PyTorch's layer on top of the pickle machine: the three containers torch writes and the
//! tensor rebuilds inside them, read as data.
//!
//! - a `.pth` from `torch.save` (zip): `<root>/data.pkl` names each storage by a persistent id
//!   `('storage', torch.FloatStorage, key, location, numel)` whose bytes are the entry
//!   `<root>/data/<key>`;
//! - a plain pickle (StyleGAN2-ADA/Lafite network snapshots, `pickle.dump`): each storage is
//!   `torch.storage._load_from_bytes(blob)` and each blob a small **legacy** torch.save stream;
//! - that legacy stream: the pickles magic number, protocol 1001 and sys_info, then the object
//!   (persistent ids `('storage', type, key, location, numel, view)`), the list of storage keys,
//!   and per key an int64 element count followed by the raw little-endian elements.
//!
//! Tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`, wrapped by
//! `_rebuild_parameter(_with_state)` for parameters or `_rebuild_from_type_v2` for subclasses.
//! Any other callable where a tensor is expected is an error that names it; nothing is called.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::machine::{parse, Object, Pickle, Value};

/// Element types of torch storages (the legacy `torch.*Storage` classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// torch's name (`torch.float32` without the prefix).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    fn from_storage_class(module: &str, name: &str) -> Option<DType> {
        if module != "torch" {
            return None;
        }
        Some(match name {
            "DoubleStorage" => DType::F64,
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
}

/// A tensor read from a checkpoint: its dtype, shape and contiguous little-endian elements.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements as f32 (float64 rounded to nearest, as `tensor.float()` does).
    pub fn to_f32(&self) -> Vec<f32> {
        let d = &self.data;
        match self.dtype {
            DType::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F64 => d
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            DType::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => d
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::I64 => d
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            DType::I32 => d
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                .collect(),
            DType::I16 => d
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
                .collect(),
            DType::I8 => d.iter().map(|&b| b as i8 as f32).collect(),
            DType::U8 | DType::Bool => d.iter().map(|&b| b as f32).collect(),
        }
    }
}

/// What a file is, by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// `torch.save` (the zip format, PyTorch ≥ 1.6).
    Zip,
    /// `pickle.dump` of objects holding tensors (network snapshots).
    Pickle,
    /// `torch.save(..., _use_new_zipfile_serialization=False)`.
    LegacyTorch,
}

/// The magic number that opens a legacy torch.save stream.
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;

/// A storage: its dtype and every element's bytes.
#[derive(Debug)]
struct Storage {
    dtype: DType,
    data: Vec<u8>,
}

/// A parsed checkpoint file: its object tree and where its storages are.
pub struct TorchFile {
    pub path: PathBuf,
    pub container: Container,
    pub pickle: Pickle,
    /// The zip's entries by name (for `.pth`), read on demand.
    zip: Option<(zip::ZipArchive<std::fs::File>, String)>,
    /// Legacy-stream storages, by key.
    legacy: HashMap<String, Storage>,
    /// Storages already read, by the object that names them (shared storages are read once).
    cache: HashMap<usize, std::rc::Rc<Storage>>,
}

/// How deep nested containers may go before a file is refused (real checkpoints stay below 20).
pub const MAX_DEPTH: usize = 64;

impl TorchFile {
    /// Opens a `.pth` (zip or legacy) or a plain pickle; the container is told by its bytes.
    pub fn open(path: &Path) -> Result<TorchFile, String> {
        let mut f = std::fs::File::open(path).map_err(|e| format!("opening: {e}"))?;
        let mut head = [0u8; 4];
        let n = f.read(&mut head).map_err(|e| format!("reading: {e}"))?;
        if n == 4 && head == *b"PK\x03\x04" {
            drop(f);
            return Self::open_zip(path);
        }
        let data = std::fs::read(path).map_err(|e| format!("reading: {e}"))?;
        Self::from_pickle_bytes(path, &data)
    }

    /// A plain pickle or a legacy torch stream held in memory.
    pub fn from_pickle_bytes(path: &Path, data: &[u8]) -> Result<TorchFile, String> {
        if data.is_empty() {
            return Err("the file is empty".into());
        }
        if data[0] != 0x80 {
            return Err(format!(
                "not a pickle or a torch checkpoint (it starts with byte 0x{:02x}; pickles start with 0x80, .pth zips with `PK`)",
                data[0]
            ));
        }
        let first = parse(data)?;
        if is_legacy_magic(&first) {
            let (pickle, legacy) = read_legacy(data)?;
            return Ok(TorchFile {
                path: path.to_path_buf(),
                container: Container::LegacyTorch,
                pickle,
                zip: None,
                legacy,
                cache: HashMap::new(),
            });
        }
        Ok(TorchFile {
            path: path.to_path_buf(),
            container: Container::Pickle,
            pickle: first,
            zip: None,
            legacy: HashMap::new(),
            cache: HashMap::new(),
        })
    }

    fn open_zip(path: &Path) -> Result<TorchFile, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("opening: {e}"))?;
        let mut zip =
            zip::ZipArchive::new(f).map_err(|e| format!("not a readable zip archive: {e}"))?;
        let pkl = zip
            .file_names()
            .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .map(str::to_string)
            .ok_or("a zip without `<name>/data.pkl`: not a torch.save file")?;
        let root = pkl.trim_end_matches("data.pkl").to_string();
        if let Ok(mut e) = zip.by_name(&format!("{root}byteorder")) {
            let mut s = String::new();
            e.by_ref()
                .take(16)
                .read_to_string(&mut s)
                .map_err(|e| format!("reading {root}byteorder: {e}"))?;
            if s.trim() != "little" {
                return Err(format!(
                    "{root}byteorder says `{}`: only little-endian files are read",
                    s.trim()
                ));
            }
        }
        let bytes = read_entry(&mut zip, &pkl, None)?;
        let pickle = parse(&bytes).map_err(|e| format!("{pkl}: {e}"))?;
        Ok(TorchFile {
            path: path.to_path_buf(),
            container: Container::Zip,
            pickle,
            zip: Some((zip, root)),
            legacy: HashMap::new(),
            cache: HashMap::new(),
        })
    }

    /// Whether `v` is one of the tensor rebuilds this reader interprets.
    pub fn is_tensor(&self, v: Value) -> bool {
        matches!(
            self.call_target(v),
            Some((
                "torch._utils",
                "_rebuild_tensor_v2"
                    | "_rebuild_tensor"
                    | "_rebuild_parameter"
                    | "_rebuild_parameter_with_state"
                    | "_rebuild_from_type_v2"
            ))
        )
    }

    /// The global a `REDUCE`/`NEWOBJ` record calls.
    pub fn call_target(&self, v: Value) -> Option<(&str, &str)> {
        match self.pickle.object(v) {
            Some(Object::Call { callable, .. }) => self.pickle.global(*callable),
            _ => None,
        }
    }

    fn call_args(&self, v: Value) -> Result<&[Value], String> {
        match self.pickle.object(v) {
            Some(Object::Call { args, .. }) => self
                .pickle
                .seq(*args)
                .ok_or_else(|| "its arguments are not a tuple".to_string()),
            _ => Err(format!(
                "expected a call, found {}",
                self.pickle.describe(v)
            )),
        }
    }

    /// Reads the tensor `v` names (every element, made contiguous).
    pub fn tensor(&mut self, v: Value) -> Result<RawTensor, String> {
        self.tensor_at(v, 0)
    }

    fn tensor_at(&mut self, v: Value, depth: usize) -> Result<RawTensor, String> {
        if depth > 4 {
            return Err("tensor rebuilds nested too deeply".into());
        }
        let target = self
            .call_target(v)
            .map(|(m, n)| (m.to_string(), n.to_string()));
        let args = match &target {
            Some((m, _)) if m == "torch._utils" => self.call_args(v)?.to_vec(),
            _ => Vec::new(),
        };
        match target.as_ref().map(|(m, n)| (m.as_str(), n.as_str())) {
            Some(("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor")) => {
                self.rebuild_tensor(&args)
            }
            Some(("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")) => {
                let data = *args.first().ok_or("_rebuild_parameter without data")?;
                self.tensor_at(data, depth + 1)
            }
            Some(("torch._utils", "_rebuild_from_type_v2")) => {
                // (func, new_type, args, state): func must itself be a tensor rebuild
                let (func, inner) = match args.as_slice() {
                    [f, _, a, ..] => (*f, *a),
                    _ => return Err("_rebuild_from_type_v2 needs (func, type, args, state)".into()),
                };
                match self.pickle.global(func) {
                    Some(("torch._utils", "_rebuild_tensor_v2")) => {}
                    _ => {
                        return Err(format!(
                            "_rebuild_from_type_v2 of {}: only torch._utils._rebuild_tensor_v2 is read",
                            self.pickle.describe(func)
                        ))
                    }
                }
                let inner = self
                    .pickle
                    .seq(inner)
                    .ok_or("_rebuild_from_type_v2: its args are not a tuple")?
                    .to_vec();
                self.rebuild_tensor(&inner)
            }
            _ => Err(format!(
                "expected a tensor, found {}: only torch._utils' tensor and parameter rebuilds are read, never called",
                self.pickle.describe(v)
            )),
        }
    }

    fn rebuild_tensor(&mut self, args: &[Value]) -> Result<RawTensor, String> {
        let [storage, offset, size, stride, ..] = args else {
            return Err(
                "_rebuild_tensor_v2 needs (storage, offset, size, stride, …), got fewer".into(),
            );
        };
        let offset = self.nonneg(*offset, "storage offset")?;
        let size = self.ints(*size, "size")?;
        let stride = self.ints(*stride, "stride")?;
        if size.len() != stride.len() {
            return Err(format!(
                "size {size:?} and stride {stride:?} have different ranks"
            ));
        }
        let storage = self.storage(*storage)?;
        let elem = storage.dtype.size();
        let storage_numel = storage.data.len() / elem;
        let numel = size
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s))
            .ok_or("the tensor's element count overflows")?;
        if numel > storage_numel {
            return Err(format!(
                "a tensor of shape {size:?} ({numel} elements) is larger than its storage ({storage_numel} elements)"
            ));
        }
        let mut data = Vec::with_capacity(numel * elem);
        if numel > 0 {
            let last = size
                .iter()
                .zip(&stride)
                .try_fold(offset, |a, (&n, &s)| a.checked_add((n - 1).checked_mul(s)?))
                .ok_or("the tensor's extent overflows")?;
            if last >= storage_numel {
                return Err(format!(
                    "a tensor of shape {size:?}, stride {stride:?} at offset {offset} reaches element {last}, past the end of its storage ({storage_numel} elements)"
                ));
            }
            gather(&storage.data, elem, offset, &size, &stride, &mut data);
        }
        Ok(RawTensor {
            dtype: storage.dtype,
            shape: size,
            data,
        })
    }

    fn nonneg(&self, v: Value, what: &str) -> Result<usize, String> {
        match v {
            Value::Int(i) if i >= 0 => Ok(i as usize),
            other => Err(format!(
                "the tensor's {what} is {}, not a non-negative int",
                self.pickle.describe(other)
            )),
        }
    }

    fn ints(&self, v: Value, what: &str) -> Result<Vec<usize>, String> {
        let seq = self
            .pickle
            .seq(v)
            .ok_or_else(|| format!("the tensor's {what} is not a tuple"))?;
        seq.iter().map(|&x| self.nonneg(x, what)).collect()
    }

    fn storage(&mut self, v: Value) -> Result<std::rc::Rc<Storage>, String> {
        let Value::Ref(id) = v else {
            return Err(format!(
                "expected a storage, found {}",
                self.pickle.describe(v)
            ));
        };
        if let Some(s) = self.cache.get(&id) {
            return Ok(s.clone());
        }
        let storage = match self.pickle.object(v) {
            Some(Object::Persistent(pid)) => {
                let pid = storage_id(&self.pickle, *pid)?;
                self.persistent_storage(pid)?
            }
            Some(Object::Call { .. }) => match self.call_target(v) {
                Some(("torch.storage", "_load_from_bytes")) => {
                    let blob = self.call_args(v)?;
                    let blob = blob
                        .first()
                        .and_then(|&b| self.pickle.bytes(b))
                        .ok_or("_load_from_bytes without a bytes argument")?;
                    storage_from_blob(blob)?
                }
                _ => {
                    return Err(format!(
                        "expected a storage, found {}: only persistent ids and torch.storage._load_from_bytes are read",
                        self.pickle.describe(v)
                    ))
                }
            },
            _ => {
                return Err(format!(
                    "expected a storage, found {}",
                    self.pickle.describe(v)
                ))
            }
        };
        let s = std::rc::Rc::new(storage);
        self.cache.insert(id, s.clone());
        Ok(s)
    }

    fn persistent_storage(&mut self, id: StorageId) -> Result<Storage, String> {
        let nbytes = id
            .numel
            .checked_mul(id.dtype.size())
            .ok_or("the storage's byte count overflows")?;
        if let Some((zip, root)) = &mut self.zip {
            let name = format!("{root}data/{}", id.key);
            let data = read_entry(zip, &name, Some(nbytes))?;
            return Ok(Storage {
                dtype: id.dtype,
                data,
            });
        }
        let s = self.legacy.get(&id.key).ok_or_else(|| {
            format!(
                "storage `{}` is named but the file holds no such storage",
                id.key
            )
        })?;
        if s.data.len() != nbytes || s.dtype != id.dtype {
            return Err(format!(
                "storage `{}` is declared as {} {} elements but holds {} bytes of {}",
                id.key,
                id.numel,
                id.dtype.name(),
                s.data.len(),
                s.dtype.name()
            ));
        }
        Ok(Storage {
            dtype: s.dtype,
            data: s.data.clone(),
        })
    }
}

/// Copies a strided view into `out` in row-major order.
fn gather(
    src: &[u8],
    elem: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
    out: &mut Vec<u8>,
) {
    let mut contiguous = vec![1usize; size.len()];
    for d in (0..size.len().saturating_sub(1)).rev() {
        contiguous[d] = contiguous[d + 1] * size[d + 1];
    }
    let numel: usize = size.iter().product();
    let is_contiguous = size
        .iter()
        .zip(stride.iter().zip(&contiguous))
        .all(|(&n, (&s, &c))| n <= 1 || s == c);
    if is_contiguous {
        out.extend_from_slice(&src[offset * elem..(offset + numel) * elem]);
        return;
    }
    let mut index = vec![0usize; size.len()];
    for _ in 0..numel {
        let at = offset + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&src[at * elem..(at + 1) * elem]);
        for d in (0..size.len()).rev() {
            index[d] += 1;
            if index[d] < size[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

/// A persistent storage id, decoded.
struct StorageId {
    dtype: DType,
    key: String,
    numel: usize,
}

/// `('storage', torch.FloatStorage, key, location, numel[, view_metadata])`.
fn storage_id(p: &Pickle, pid: Value) -> Result<StorageId, String> {
    let t = p
        .seq(pid)
        .ok_or_else(|| format!("persistent id is {}, not a tuple", p.describe(pid)))?;
    if t.len() < 5 || p.str(t[0]) != Some("storage") {
        return Err(format!(
            "persistent id {} is not ('storage', type, key, location, numel)",
            p.describe(pid)
        ));
    }
    let dtype = match p.global(t[1]) {
        Some((m, n)) => DType::from_storage_class(m, n)
            .ok_or_else(|| format!("storage type `{m}.{n}` is not a torch storage class"))?,
        None => return Err(format!("storage type is {}", p.describe(t[1]))),
    };
    let key = match (p.str(t[2]), t[2]) {
        (Some(s), _) => s.to_string(),
        (None, Value::Int(i)) => i.to_string(),
        _ => return Err("storage key is not a string".into()),
    };
    if t.get(5).is_some_and(|v| *v != Value::None) {
        return Err(format!(
            "storage `{key}` is a view into another storage (pre-1.0 torch): not read"
        ));
    }
    let numel = match t[4] {
        Value::Int(n) if n >= 0 => n as usize,
        other => return Err(format!("storage size is {}", p.describe(other))),
    };
    Ok(StorageId { dtype, key, numel })
}

fn is_legacy_magic(p: &Pickle) -> bool {
    match p.object(p.root) {
        Some(Object::BigInt(b)) => {
            let mut le = LEGACY_MAGIC.to_le_bytes().to_vec();
            while le.len() > b.len() && le.last() == Some(&0) {
                le.pop();
            }
            *b == le
        }
        _ => false,
    }
}

/// A `torch.storage._load_from_bytes` blob: a legacy stream whose object is one storage.
fn storage_from_blob(blob: &[u8]) -> Result<Storage, String> {
    let (pickle, mut storages) =
        read_legacy(blob).map_err(|e| format!("a storage blob (legacy torch.save): {e}"))?;
    let Some(Object::Persistent(pid)) = pickle.object(pickle.root) else {
        return Err(format!(
            "a storage blob holds {}, not a storage",
            pickle.describe(pickle.root)
        ));
    };
    let id = storage_id(&pickle, *pid)?;
    let s = storages
        .remove(&id.key)
        .ok_or_else(|| format!("a storage blob names storage `{}` but holds none", id.key))?;
    if s.data.len() != id.numel * id.dtype.size() {
        return Err(format!(
            "a storage blob declares {} elements but holds {} bytes of {}",
            id.numel,
            s.data.len(),
            s.dtype.name()
        ));
    }
    Ok(s)
}

/// Parses a legacy torch.save stream: (the object's pickle, its storages by key).
fn read_legacy(data: &[u8]) -> Result<(Pickle, HashMap<String, Storage>), String> {
    let mut pos = 0;
    let mut next = |what: &str| -> Result<Pickle, String> {
        let p = parse(&data[pos..]).map_err(|e| format!("its {what}: {e}"))?;
        pos += p.consumed;
        Ok(p)
    };
    let magic = next("magic number")?;
    if !is_legacy_magic(&magic) {
        return Err("it does not start with torch's magic number".into());
    }
    let proto = next("protocol version")?;
    if proto.root != Value::Int(1001) {
        return Err(format!(
            "legacy protocol {}, expected 1001",
            proto.describe(proto.root)
        ));
    }
    let _sys_info = next("sys_info")?;
    let object = next("object")?;
    let keys = next("storage key list")?;
    let key_list: Vec<String> = keys
        .seq(keys.root)
        .ok_or("the storage key list is not a list")?
        .iter()
        .map(|&k| keys.str(k).map(str::to_string))
        .collect::<Option<_>>()
        .ok_or("a storage key is not a string")?;
    // each key's dtype comes from the persistent ids in the object
    let mut dtypes = HashMap::new();
    for o in &object.objects {
        if let Object::Persistent(pid) = o {
            let id = storage_id(&object, *pid)?;
            dtypes.insert(id.key, id.dtype);
        }
    }
    let mut storages = HashMap::new();
    for key in key_list {
        let dtype = *dtypes
            .get(&key)
            .ok_or_else(|| format!("storage `{key}` is listed but never named"))?;
        let count = data
            .get(pos..pos + 8)
            .ok_or_else(|| format!("storage `{key}`: truncated before its size"))?;
        let count = u64::from_le_bytes(count.try_into().unwrap_or([0; 8]));
        pos += 8;
        let nbytes = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(dtype.size()))
            .filter(|&n| n <= data.len() - pos)
            .ok_or_else(|| {
                format!(
                    "storage `{key}` claims {count} elements of {} but only {} bytes remain",
                    dtype.name(),
                    data.len() - pos
                )
            })?;
        storages.insert(
            key,
            Storage {
                dtype,
                data: data[pos..pos + nbytes].to_vec(),
            },
        );
        pos += nbytes;
    }
    Ok((object, storages))
}

/// One zip entry's bytes. With `expected`, the entry must hold exactly that many.
fn read_entry(
    zip: &mut zip::ZipArchive<std::fs::File>,
    name: &str,
    expected: Option<usize>,
) -> Result<Vec<u8>, String> {
    let entry = zip
        .by_name(name)
        .map_err(|e| format!("zip entry `{name}`: {e}"))?;
    let declared = entry.size();
    if let Some(n) = expected {
        if declared != n as u64 {
            return Err(format!(
                "zip entry `{name}` holds {declared} bytes but its storage needs {n}"
            ));
        }
    }
    let cap = expected.map(|n| n as u64).unwrap_or(declared);
    let mut data = Vec::new();
    entry
        .take(cap)
        .read_to_end(&mut data)
        .map_err(|e| format!("reading zip entry `{name}`: {e}"))?;
    if data.len() as u64 != cap {
        return Err(format!(
            "zip entry `{name}` declares {cap} bytes but only {} could be read (truncated?)",
            data.len()
        ));
    }
    Ok(data)
}
