//! The pickle virtual machine, run as data: every opcode of protocols 0–5 that plain data and
//! torch checkpoints use builds an inert tree. Nothing is imported and nothing is called:
//! `GLOBAL`/`STACK_GLOBAL` become [`Object::Global`] records by module and name, and `REDUCE`,
//! `NEWOBJ`, `NEWOBJ_EX` and `BUILD` become [`Object::Call`] records of (callable, arguments,
//! state, the items set on it). What a record means is decided later, by an allow-list
//! (`super::torch`, `super::module`).
//!
//! Objects live in an arena and values refer to them by index, as the memo does in Python: a
//! dict filled after it was memoised is the same dict wherever it is fetched, a `GET` costs
//! nothing however large the object, and a self-referencing structure is representable (its
//! walkers refuse it). Every length is checked against the bytes that remain before anything is
//! allocated, so memory stays within a small multiple of the input.
//!
//! Why not the `serde-pickle` crate: it turns an unknown global into an error or into `None`
//! (dropping its module and name), keeps no record of `REDUCE`/`BUILD` calls, and has no
//! persistent ids, which are how every `.pth` names its storages; those records are exactly what
//! a checkpoint reader must inspect.

use std::collections::HashMap;

/// A value on the stack: scalars inline, everything else an index into [`Pickle::objects`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ref(usize),
}

/// How a [`Object::Call`] record was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// `REDUCE`: callable(*args).
    Reduce,
    /// `NEWOBJ` / `NEWOBJ_EX`: cls.__new__(cls, *args) (the usual pickling of class instances).
    NewObj,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Str(String),
    Bytes(Vec<u8>),
    /// An integer too wide for i64: little-endian two's complement, as `LONG1`/`LONG4` store it.
    BigInt(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    Global {
        module: String,
        name: String,
    },
    /// An inert call: what would have been built, never built.
    Call {
        kind: CallKind,
        callable: Value,
        args: Value,
        kwargs: Option<Value>,
        /// The argument of `BUILD` (`__setstate__` or `__dict__.update`).
        state: Option<Value>,
        /// `SETITEM(S)` on the result (dict subclasses such as OrderedDict or EasyDict).
        items: Vec<(Value, Value)>,
        /// `APPEND(S)` on the result (list subclasses).
        appended: Vec<Value>,
    },
    /// A persistent id (`PERSID`/`BINPERSID`): what `persistent_load` would have resolved.
    Persistent(Value),
}

/// A parsed pickle: the arena and the value `STOP` returned.
#[derive(Debug)]
pub struct Pickle {
    pub objects: Vec<Object>,
    pub root: Value,
    /// Bytes consumed, `STOP` included (legacy torch files hold several pickles back to back).
    pub consumed: usize,
}

impl Pickle {
    pub fn object(&self, v: Value) -> Option<&Object> {
        match v {
            Value::Ref(i) => self.objects.get(i),
            _ => None,
        }
    }
    pub fn str(&self, v: Value) -> Option<&str> {
        match self.object(v) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn bytes(&self, v: Value) -> Option<&[u8]> {
        match self.object(v) {
            Some(Object::Bytes(b)) => Some(b),
            _ => None,
        }
    }
    /// The elements of a tuple or a list.
    pub fn seq(&self, v: Value) -> Option<&[Value]> {
        match self.object(v) {
            Some(Object::Tuple(t)) | Some(Object::List(t)) => Some(t),
            _ => None,
        }
    }
    /// `module.name` when `v` is a global.
    pub fn global(&self, v: Value) -> Option<(&str, &str)> {
        match self.object(v) {
            Some(Object::Global { module, name }) => Some((module, name)),
            _ => None,
        }
    }
    /// A short description for error messages: the type, and the global for calls.
    pub fn describe(&self, v: Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Float(f) => format!("float {f}"),
            Value::Ref(_) => match self.object(v) {
                Some(Object::Str(s)) => format!("str {:?}", truncate(s, 40)),
                Some(Object::Bytes(b)) => format!("{} bytes", b.len()),
                Some(Object::BigInt(_)) => "a big int".into(),
                Some(Object::List(l)) => format!("a list of {}", l.len()),
                Some(Object::Tuple(t)) => format!("a tuple of {}", t.len()),
                Some(Object::Dict(d)) => format!("a dict of {}", d.len()),
                Some(Object::Set(s)) => format!("a set of {}", s.len()),
                Some(Object::Global { module, name }) => format!("the global `{module}.{name}`"),
                Some(Object::Call { callable, .. }) => match self.global(*callable) {
                    Some((m, n)) => format!("a call of `{m}.{n}`"),
                    None => "a call of a non-global".into(),
                },
                Some(Object::Persistent(_)) => "a persistent id".into(),
                None => "a dangling reference".into(),
            },
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Runs the machine over `data` until `STOP`. Errors say which opcode at which byte offset.
pub fn parse(data: &[u8]) -> Result<Pickle, String> {
    let mut m = Machine {
        data,
        pos: 0,
        objects: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        let at = m.pos;
        let op = m.byte().map_err(|_| {
            format!("the pickle is truncated: it ends at byte {at} without a STOP opcode")
        })?;
        match m.step(op) {
            Ok(true) => {
                let root = m.pop().map_err(|e| format!("STOP at byte {at}: {e}"))?;
                return Ok(Pickle {
                    objects: m.objects,
                    root,
                    consumed: m.pos,
                });
            }
            Ok(false) => {}
            Err(e) => return Err(format!("{} at byte {at}: {e}", op_name(op))),
        }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    objects: Vec<Object>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

fn op_name(op: u8) -> String {
    match op {
        0x20..=0x7e => format!("opcode {:?} (0x{op:02x})", op as char),
        _ => format!("opcode 0x{op:02x}"),
    }
}

impl Machine<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(format!(
                "needs {n} bytes but the pickle has only {left} left (truncated?)"
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32_le(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64_le(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    fn len_u64(&mut self) -> Result<usize, String> {
        let n = self.u64_le()?;
        usize::try_from(n).map_err(|_| format!("length {n} does not fit in memory"))
    }

    /// A text argument up to (not including) the newline, as protocol 0 writes it.
    fn line(&mut self) -> Result<&str, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("its text argument has no terminating newline (truncated?)")?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| "its text argument is not UTF-8".to_string())
    }

    fn alloc(&mut self, o: Object) -> Value {
        self.objects.push(o);
        Value::Ref(self.objects.len() - 1)
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("the stack is empty".into());
        }
        self.stack.pop().ok_or_else(|| "the stack is empty".into())
    }

    fn top(&self) -> Result<Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("the stack is empty".into());
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| "the stack is empty".into())
    }

    /// Everything above the last MARK, the mark removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("there is no MARK on the stack")?;
        Ok(self.stack.split_off(m))
    }

    fn str_obj(&mut self, s: String) -> Value {
        self.alloc(Object::Str(s))
    }

    fn utf8(&mut self, n: usize) -> Result<Value, String> {
        let s = std::str::from_utf8(self.take(n)?)
            .map_err(|_| "the string is not valid UTF-8".to_string())?
            .to_string();
        Ok(self.str_obj(s))
    }

    fn bytes_obj(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?.to_vec();
        Ok(self.alloc(Object::Bytes(b)))
    }

    fn long(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?.to_vec();
        if b.len() <= 8 {
            let mut x: i64 = 0;
            for (i, &byte) in b.iter().enumerate() {
                x |= (byte as i64) << (8 * i);
            }
            if let Some(&last) = b.last() {
                if last & 0x80 != 0 && b.len() < 8 {
                    x |= -1i64 << (8 * b.len());
                }
            }
            Ok(Value::Int(x))
        } else {
            Ok(self.alloc(Object::BigInt(b)))
        }
    }

    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        let v = self.top()?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), String> {
        let v = *self
            .memo
            .get(&key)
            .ok_or_else(|| format!("memo entry {key} was never stored"))?;
        self.push(v);
        Ok(())
    }

    fn object_mut(&mut self, v: Value, what: &str) -> Result<&mut Object, String> {
        match v {
            Value::Ref(i) => self
                .objects
                .get_mut(i)
                .ok_or_else(|| "a dangling reference".into()),
            other => Err(format!("{what} on a {other:?}, which holds no items")),
        }
    }

    fn set_items(&mut self, target: Value, pairs: Vec<Value>) -> Result<(), String> {
        if pairs.len() % 2 != 0 {
            return Err("an odd number of keys and values".into());
        }
        let kv: Vec<(Value, Value)> = pairs.chunks(2).map(|p| (p[0], p[1])).collect();
        match self.object_mut(target, "SETITEMS")? {
            Object::Dict(d) => d.extend(kv),
            Object::Call { items, .. } => items.extend(kv),
            _ => return Err("SETITEMS on something that is not a dict".into()),
        }
        Ok(())
    }

    fn append(&mut self, target: Value, values: Vec<Value>) -> Result<(), String> {
        match self.object_mut(target, "APPENDS")? {
            Object::List(l) => l.extend(values),
            Object::Call { appended, .. } => appended.extend(values),
            _ => return Err("APPENDS on something that is not a list".into()),
        }
        Ok(())
    }

    fn global(&mut self, module: String, name: String) -> Value {
        self.alloc(Object::Global { module, name })
    }

    fn call(
        &mut self,
        kind: CallKind,
        callable: Value,
        args: Value,
        kwargs: Option<Value>,
    ) -> Value {
        self.alloc(Object::Call {
            kind,
            callable,
            args,
            kwargs,
            state: None,
            items: Vec::new(),
            appended: Vec::new(),
        })
    }

    /// One opcode; `Ok(true)` at STOP.
    fn step(&mut self, op: u8) -> Result<bool, String> {
        match op {
            b'.' => return Ok(true),
            0x80 => {
                let proto = self.byte()?;
                if proto > 5 {
                    return Err(format!("pickle protocol {proto} is newer than 5"));
                }
            }
            0x95 => {
                self.u64_le()?; // FRAME: a length hint only
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?;
                self.push(v);
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'I' => {
                let v = match self.line()? {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    s => Value::Int(s.parse().map_err(|_| format!("bad INT {s:?}"))?),
                };
                self.push(v);
            }
            b'J' => {
                let v = self.u32_le()? as i32 as i64;
                self.push(Value::Int(v));
            }
            b'K' => {
                let v = self.byte()? as i64;
                self.push(Value::Int(v));
            }
            b'M' => {
                let b = self.take(2)?;
                let v = u16::from_le_bytes([b[0], b[1]]) as i64;
                self.push(Value::Int(v));
            }
            b'L' => {
                let s = self.line()?.trim_end_matches('L');
                let v = s.parse().map_err(|_| format!("LONG {s:?} is too wide"))?;
                self.push(Value::Int(v));
            }
            0x8a => {
                let n = self.byte()? as usize;
                let v = self.long(n)?;
                self.push(v);
            }
            0x8b => {
                let n = self.u32_le()? as usize;
                let v = self.long(n)?;
                self.push(v);
            }
            b'F' => {
                let s = self.line()?;
                let v = s.trim().parse().map_err(|_| format!("bad FLOAT {s:?}"))?;
                self.push(Value::Float(v));
            }
            b'G' => {
                let b = self.take(8)?;
                let v = f64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
                self.push(Value::Float(v));
            }
            b'S' => {
                let s = self.line()?;
                let inner = s
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                    .ok_or("STRING argument is not quoted")?
                    .to_string();
                let v = self.str_obj(inner);
                self.push(v);
            }
            b'T' => {
                let n = self.u32_le()? as usize;
                let v = self.bytes_obj(n)?;
                self.push(v);
            }
            b'U' => {
                let n = self.byte()? as usize;
                let v = self.bytes_obj(n)?;
                self.push(v);
            }
            b'V' => {
                let s = self.line()?.to_string();
                let v = self.str_obj(s);
                self.push(v);
            }
            b'X' => {
                let n = self.u32_le()? as usize;
                let v = self.utf8(n)?;
                self.push(v);
            }
            0x8c => {
                let n = self.byte()? as usize;
                let v = self.utf8(n)?;
                self.push(v);
            }
            0x8d => {
                let n = self.len_u64()?;
                let v = self.utf8(n)?;
                self.push(v);
            }
            b'B' => {
                let n = self.u32_le()? as usize;
                let v = self.bytes_obj(n)?;
                self.push(v);
            }
            b'C' => {
                let n = self.byte()? as usize;
                let v = self.bytes_obj(n)?;
                self.push(v);
            }
            0x8e | 0x96 => {
                let n = self.len_u64()?;
                let v = self.bytes_obj(n)?;
                self.push(v);
            }
            b']' => {
                let v = self.alloc(Object::List(Vec::new()));
                self.push(v);
            }
            b'l' => {
                let items = self.pop_mark()?;
                let v = self.alloc(Object::List(items));
                self.push(v);
            }
            b'a' => {
                let x = self.pop()?;
                let target = self.top()?;
                self.append(target, vec![x])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.append(target, items)?;
            }
            b')' => {
                let v = self.alloc(Object::Tuple(Vec::new()));
                self.push(v);
            }
            b't' => {
                let items = self.pop_mark()?;
                let v = self.alloc(Object::Tuple(items));
                self.push(v);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let floor = self.marks.last().copied().unwrap_or(0);
                if self.stack.len() < floor + n {
                    return Err(format!("needs {n} values on the stack"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                let v = self.alloc(Object::Tuple(items));
                self.push(v);
            }
            b'}' => {
                let v = self.alloc(Object::Dict(Vec::new()));
                self.push(v);
            }
            b'd' => {
                let items = self.pop_mark()?;
                let v = self.alloc(Object::Dict(Vec::new()));
                self.set_items(v, items)?;
                self.push(v);
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                let target = self.top()?;
                self.set_items(target, vec![key, value])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.set_items(target, items)?;
            }
            0x8f => {
                let v = self.alloc(Object::Set(Vec::new()));
                self.push(v);
            }
            0x90 => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                match self.object_mut(target, "ADDITEMS")? {
                    Object::Set(s) => s.extend(items),
                    _ => return Err("ADDITEMS on something that is not a set".into()),
                }
            }
            0x91 => {
                let items = self.pop_mark()?;
                let v = self.alloc(Object::Set(items));
                self.push(v);
            }
            b'c' => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                let v = self.global(module, name);
                self.push(v);
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let get = |m: &Machine, v: Value| match v {
                    Value::Ref(i) => match m.objects.get(i) {
                        Some(Object::Str(s)) => Some(s.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                let (Some(module), Some(name)) = (get(self, module), get(self, name)) else {
                    return Err("STACK_GLOBAL needs two strings".into());
                };
                let v = self.global(module, name);
                self.push(v);
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(CallKind::Reduce, callable, args, None);
                self.push(v);
            }
            0x81 => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let v = self.call(CallKind::NewObj, cls, args, None);
                self.push(v);
            }
            0x92 => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                let v = self.call(CallKind::NewObj, cls, args, Some(kwargs));
                self.push(v);
            }
            b'b' => {
                let new_state = self.pop()?;
                let target = self.top()?;
                match self.object_mut(target, "BUILD")? {
                    Object::Call { state, .. } => *state = Some(new_state),
                    _ => return Err("BUILD on something that was not constructed by a call".into()),
                }
            }
            b'p' => {
                let key = self
                    .line()?
                    .parse()
                    .map_err(|_| "bad PUT key".to_string())?;
                self.memo_put(key)?;
            }
            b'q' => {
                let key = self.byte()? as u32;
                self.memo_put(key)?;
            }
            b'r' => {
                let key = self.u32_le()?;
                self.memo_put(key)?;
            }
            0x94 => {
                let key = self.memo.len() as u32;
                self.memo_put(key)?;
            }
            b'g' => {
                let key = self
                    .line()?
                    .parse()
                    .map_err(|_| "bad GET key".to_string())?;
                self.memo_get(key)?;
            }
            b'h' => {
                let key = self.byte()? as u32;
                self.memo_get(key)?;
            }
            b'j' => {
                let key = self.u32_le()?;
                self.memo_get(key)?;
            }
            b'P' => {
                let id = self.line()?.to_string();
                let id = self.str_obj(id);
                let v = self.alloc(Object::Persistent(id));
                self.push(v);
            }
            b'Q' => {
                let id = self.pop()?;
                let v = self.alloc(Object::Persistent(id));
                self.push(v);
            }
            b'i' | b'o' | 0x82..=0x84 | 0x97 | 0x98 => {
                return Err(
                    "is not supported (old-style INST/OBJ, the extension registry and out-of-band buffers are not used by torch checkpoints)"
                        .into(),
                );
            }
            _ => return Err("is not a pickle opcode (corrupt or not a pickle)".into()),
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_2_dict_of_list_and_memo() {
        // pickle.dumps({'a': [1, 2], 'b': 'a'}, protocol=2) with the list fetched twice
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02eX\x01\x00\x00\x00bq\x03h\x02u.";
        let p = parse(data).unwrap();
        let Some(Object::Dict(d)) = p.object(p.root) else {
            panic!("root is not a dict")
        };
        assert_eq!(d.len(), 2);
        assert_eq!(p.str(d[0].0), Some("a"));
        assert_eq!(p.seq(d[0].1).unwrap(), &[Value::Int(1), Value::Int(2)]);
        // the memo hands back the same object, filled after it was stored
        assert_eq!(d[0].1, d[1].1);
    }

    #[test]
    fn long1_sign_extends() {
        let p = parse(b"\x80\x02\x8a\x02\x00\xff.").unwrap();
        assert_eq!(p.root, Value::Int(-256));
        let p = parse(b"\x80\x02\x8a\x01\x7f.").unwrap();
        assert_eq!(p.root, Value::Int(127));
    }
}
