//! `torch.nn.Module`s inside a pickle, read as data: their state_dicts by dotted name and, for
//! StyleGAN2-ADA's persistent classes, the constructor's keyword arguments.
//!
//! A module is pickled as `NEWOBJ(cls)` + `BUILD(__dict__)`, or, for a class decorated with
//! `torch_utils.persistence.persistent_class`, as
//! `_reconstruct_persistent_obj({type, version, module_src, class_name, state: __dict__})`.
//! Either way `__dict__` holds `_parameters`, `_buffers` (with `_non_persistent_buffers_set`) and
//! `_modules`, from which `state_dict()` is rebuilt exactly as PyTorch orders it: a module's
//! parameters, then its persistent buffers, then each child under `name.`.

use std::collections::HashSet;

use serde_json::Value as Json;

use super::machine::{Object, Pickle, Value};
use super::torch::{TorchFile, MAX_DEPTH};

/// Dict subclasses whose items are read as a dict (their `SETITEMS` on the inert call).
const DICT_TYPES: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("dnnlib.util", "EasyDict"),
    ("dnnlib", "EasyDict"),
];

/// The items of a dict or of an allow-listed dict subclass.
pub fn dict_items(p: &Pickle, v: Value) -> Option<&[(Value, Value)]> {
    match p.object(v)? {
        Object::Dict(d) => Some(d),
        Object::Call {
            callable, items, ..
        } => {
            let g = p.global(*callable)?;
            DICT_TYPES.contains(&g).then_some(items.as_slice())
        }
        _ => None,
    }
}

/// `dict[key]` for a string key.
pub fn dict_get(p: &Pickle, v: Value, key: &str) -> Option<Value> {
    dict_items(p, v)?
        .iter()
        .find(|(k, _)| p.str(*k) == Some(key))
        .map(|(_, v)| *v)
}

/// How many values (tensors, modules, data nodes) one walk may visit. Shared references make
/// a pickle a DAG, which expands exponentially in its depth: `[[x, x], [x, x]]` nested 60 times
/// is 2⁶⁰ values from a few hundred bytes. Real snapshots hold a few thousand.
pub const MAX_VALUES: usize = 1_000_000;

fn spend(budget: &mut usize) -> Result<(), String> {
    *budget = budget.checked_sub(1).ok_or_else(|| {
        format!("expands to more than {MAX_VALUES} values through shared references")
    })?;
    Ok(())
}

fn ref_id(v: Value) -> usize {
    match v {
        Value::Ref(i) => i,
        _ => usize::MAX,
    }
}

/// A module found in the tree.
#[derive(Clone, Debug)]
pub struct ModuleRef {
    /// `module.Class` for ordinary classes; the bare class name for persistent ones (their
    /// module exists only as the embedded source).
    pub class: String,
    pub persistent: bool,
    /// The module's `__dict__`.
    pub state: Value,
}

/// `v` as a module, when it is one.
pub fn as_module(p: &Pickle, v: Value) -> Option<ModuleRef> {
    let Object::Call {
        callable,
        args,
        state,
        ..
    } = p.object(v)?
    else {
        return None;
    };
    let (module, name) = p.global(*callable)?;
    if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj") {
        let meta = *p.seq(*args)?.first()?;
        let class = p.str(dict_get(p, meta, "class_name")?)?.to_string();
        let state = dict_get(p, meta, "state")?;
        dict_get(p, state, "_modules")?;
        return Some(ModuleRef {
            class,
            persistent: true,
            state,
        });
    }
    let state = (*state)?;
    dict_get(p, state, "_modules")?;
    // NEWOBJ(cls) names the class; copyreg._reconstructor(cls, object, None) passes it first
    let class = if (module, name) == ("copyreg", "_reconstructor") {
        let cls = *p.seq(*args)?.first()?;
        let (m, n) = p.global(cls)?;
        format!("{m}.{n}")
    } else {
        format!("{module}.{name}")
    };
    Some(ModuleRef {
        class,
        persistent: false,
        state,
    })
}

/// The module's `state_dict()`: (dotted name, tensor value), in PyTorch's order.
pub fn state_dict(f: &TorchFile, module: &ModuleRef) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::new();
    let mut on_path = HashSet::new();
    let mut budget = MAX_VALUES;
    collect(f, module, "", &mut out, &mut on_path, &mut budget, 0)?;
    Ok(out)
}

fn collect(
    f: &TorchFile,
    m: &ModuleRef,
    prefix: &str,
    out: &mut Vec<(String, Value)>,
    on_path: &mut HashSet<usize>,
    budget: &mut usize,
    depth: usize,
) -> Result<(), String> {
    let p = &f.pickle;
    spend(budget)?;
    if depth > MAX_DEPTH {
        return Err(format!(
            "modules nested more than {MAX_DEPTH} deep at `{prefix}`"
        ));
    }
    let here = ref_id(m.state);
    if !on_path.insert(here) {
        return Err(format!(
            "module `{}` contains itself (a self-referencing structure)",
            prefix.trim_end_matches('.')
        ));
    }
    let table = |key: &str| -> Result<&[(Value, Value)], String> {
        match dict_get(p, m.state, key) {
            None => Ok(&[]),
            Some(v) => dict_items(p, v)
                .ok_or_else(|| format!("`{prefix}{key}` of {} is not a dict", m.class)),
        }
    };
    let skip: HashSet<&str> = dict_get(p, m.state, "_non_persistent_buffers_set")
        .and_then(|s| match p.object(s) {
            Some(Object::Set(items)) => Some(items.iter().filter_map(|&i| p.str(i)).collect()),
            _ => None,
        })
        .unwrap_or_default();
    for (group, skip) in [("_parameters", None), ("_buffers", Some(&skip))] {
        for &(k, v) in table(group)? {
            let name = p
                .str(k)
                .ok_or_else(|| format!("a key of `{prefix}{group}` is not a string"))?;
            if v == Value::None || skip.is_some_and(|s| s.contains(name)) {
                continue;
            }
            if !f.is_tensor(v) {
                return Err(format!(
                    "`{prefix}{name}` should be a tensor but is {}",
                    p.describe(v)
                ));
            }
            spend(budget)?;
            out.push((format!("{prefix}{name}"), v));
        }
    }
    for &(k, v) in table("_modules")? {
        let name = p
            .str(k)
            .ok_or_else(|| format!("a key of `{prefix}_modules` is not a string"))?;
        if v == Value::None {
            continue;
        }
        let child = as_module(p, v).ok_or_else(|| {
            format!(
                "`{prefix}{name}` should be a module but is {}",
                p.describe(v)
            )
        })?;
        collect(
            f,
            &child,
            &format!("{prefix}{name}."),
            out,
            on_path,
            budget,
            depth + 1,
        )?;
    }
    on_path.remove(&here);
    Ok(())
}

/// A persistent module's `_init_kwargs` as JSON (None for ordinary modules, which record none).
pub fn init_kwargs(p: &Pickle, m: &ModuleRef) -> Result<Option<Json>, String> {
    if !m.persistent {
        return Ok(None);
    }
    if let Some(args) = dict_get(p, m.state, "_init_args") {
        if p.seq(args).is_some_and(|a| !a.is_empty()) {
            return Err(format!(
                "{} was constructed with positional arguments, which do not name their parameters",
                m.class
            ));
        }
    }
    let Some(kwargs) = dict_get(p, m.state, "_init_kwargs") else {
        return Err(format!("persistent {} records no _init_kwargs", m.class));
    };
    to_json(p, kwargs, Strict::Yes).map(Some)
}

/// Whether [`to_json`] refuses what JSON cannot hold, or describes it as a string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Strict {
    Yes,
    No,
}

/// Plain data as JSON: None, bools, ints, floats, strings, tuples/lists, dicts (and the
/// allow-listed dict subclasses), numpy scalars. Anything else is an error (`Strict::Yes`) or a
/// string describing it (`Strict::No`, for reports such as a snapshot's `args`).
pub fn to_json(p: &Pickle, v: Value, strict: Strict) -> Result<Json, String> {
    let mut on_path = HashSet::new();
    let mut budget = MAX_VALUES;
    json_at(p, v, strict, &mut on_path, &mut budget, 0, "")
}

fn json_at(
    p: &Pickle,
    v: Value,
    strict: Strict,
    on_path: &mut HashSet<usize>,
    budget: &mut usize,
    depth: usize,
    at: &str,
) -> Result<Json, String> {
    spend(budget)?;
    if depth > MAX_DEPTH {
        let shown: String = at.chars().take(40).collect();
        return Err(format!("nested more than {MAX_DEPTH} deep (at `{shown}…`)"));
    }
    let float = |x: f64| {
        serde_json::Number::from_f64(x)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(x.to_string()))
    };
    Ok(match v {
        Value::None => Json::Null,
        Value::Bool(b) => Json::Bool(b),
        Value::Int(i) => Json::from(i),
        Value::Float(x) => float(x),
        Value::Ref(_) => {
            if let Some(s) = p.str(v) {
                return Ok(Json::String(s.to_string()));
            }
            if let Some(x) = numpy_scalar(p, v) {
                return Ok(x.map_or(Json::Null, float));
            }
            if !on_path.insert(ref_id(v)) {
                return Err(format!(
                    "`{at}` contains itself (a self-referencing structure)"
                ));
            }
            let out = if let Some(items) = p.seq(v) {
                let mut arr = Vec::with_capacity(items.len());
                for (i, &x) in items.iter().enumerate() {
                    arr.push(json_at(
                        p,
                        x,
                        strict,
                        on_path,
                        budget,
                        depth + 1,
                        &format!("{at}[{i}]"),
                    )?);
                }
                Json::Array(arr)
            } else if let Some(items) = dict_items(p, v) {
                let mut map = serde_json::Map::new();
                for &(k, x) in items {
                    let key = match (p.str(k), k) {
                        (Some(s), _) => s.to_string(),
                        (None, Value::Int(i)) => i.to_string(),
                        _ => return Err(format!("a key of `{at}` is {}", p.describe(k))),
                    };
                    let val = json_at(
                        p,
                        x,
                        strict,
                        on_path,
                        budget,
                        depth + 1,
                        &format!("{at}.{key}"),
                    )?;
                    map.insert(key, val);
                }
                Json::Object(map)
            } else if strict == Strict::No {
                Json::String(format!("<{}>", p.describe(v)))
            } else {
                return Err(format!(
                    "`{at}` is {}, which is not plain data",
                    p.describe(v)
                ));
            };
            on_path.remove(&ref_id(v));
            out
        }
    })
}

/// `numpy.core.multiarray.scalar(dtype, bytes)` as f64 (Some(None) for a dtype not read).
fn numpy_scalar(p: &Pickle, v: Value) -> Option<Option<f64>> {
    let Object::Call { callable, args, .. } = p.object(v)? else {
        return None;
    };
    let (m, n) = p.global(*callable)?;
    if !matches!(m, "numpy.core.multiarray" | "numpy._core.multiarray") || n != "scalar" {
        return None;
    }
    let a = p.seq(*args)?;
    let (dtype, raw) = (*a.first()?, p.bytes(*a.get(1)?)?);
    let Object::Call { args, .. } = p.object(dtype)? else {
        return Some(None);
    };
    let code = p.str(*p.seq(*args)?.first()?)?;
    let le = |n: usize| -> Option<[u8; 8]> {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(raw.get(..n)?);
        Some(b)
    };
    Some(match code {
        "f8" => le(8).map(f64::from_le_bytes),
        "f4" => le(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        "i8" => le(8).map(|b| i64::from_le_bytes(b) as f64),
        "i4" => le(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        "b1" | "u1" => raw.first().map(|&b| b as f64),
        _ => None,
    })
}
