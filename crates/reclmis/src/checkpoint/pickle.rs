//! A small pickle reader that never runs pickled code.
//!
//! PyTorch files are pickles (docs §6). Python's unpickler imports and calls whatever
//! `GLOBAL`/`REDUCE` name, which is how a malicious checkpoint runs code. This machine only
//! records such calls as inert [`Object`] values; `torch.rs` decides which of them it
//! understands (tensor rebuilds, storages) and refuses the rest.
//!
//! Covered: every protocol-2 opcode `torch.save` and `torch.jit.save` emit, plus the framing
//! and short-form opcodes of protocols 3-4 (`pickle_protocol=4` is a `torch.save` option).
//! Text-mode opcodes of protocol 0 are not, and give [`PickleError::UnknownOpcode`].

use std::collections::HashMap;

/// A value rebuilt from a pickle stream. Calls are recorded, never made.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in `i64`: little-endian two's-complement bytes (`LONG1`/`LONG4`).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered, as Python dicts are; `OrderedDict()` also lands here.
    Dict(Vec<(Value, Value)>),
    /// `module.name` as written by `GLOBAL`; nothing is imported.
    Global {
        module: String,
        name: String,
    },
    /// The record of a `REDUCE` or `NEWOBJ` call and of a later `BUILD` on its result.
    Object(Box<Object>),
    /// `BINPERSID`: the id PyTorch uses to point at a storage outside the pickle.
    PersistentId(Box<Value>),
}

/// How an [`Object`] was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `REDUCE`: `callable(*args)`.
    Reduce,
    /// `NEWOBJ`: `cls.__new__(cls, *args)`; TorchScript module objects are made this way.
    NewObj,
}

/// An uncalled call: what would have been called, with what, and the state `BUILD` gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub callable: Value,
    pub args: Value,
    pub kind: CallKind,
    pub state: Option<Value>,
}

impl Value {
    /// Type name with its article, for error messages ("an int", "a dict").
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) | Value::BigInt(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global { .. } => "a global",
            Value::Object(_) => "an object",
            Value::PersistentId(_) => "a persistent id",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// Items of a tuple or a list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// `(module, name)` of a `GLOBAL`.
    pub fn as_global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The value under a string key of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

impl Object {
    /// `(module, name)` of the callable when it is a `GLOBAL`, as it always is in PyTorch files.
    pub fn global(&self) -> Option<(&str, &str)> {
        self.callable.as_global()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("unknown pickle opcode 0x{opcode:02x} at byte {at}")]
    UnknownOpcode { opcode: u8, at: usize },
    #[error("pickle stream ends inside the opcode at byte {at} (truncated?)")]
    Truncated { at: usize },
    #[error("pickle stream ends without STOP")]
    NoStop,
    #[error("unsupported pickle protocol {0}")]
    Protocol(u8),
    #[error("pickle stack underflow at byte {at} ({op})")]
    StackUnderflow { at: usize, op: &'static str },
    #[error("{op} at byte {at} has no MARK to close")]
    NoMark { at: usize, op: &'static str },
    #[error("memo entry {key} read at byte {at} was never written")]
    MissingMemo { key: u32, at: usize },
    #[error("{op} at byte {at} expects {expected}, found {found}")]
    Type {
        at: usize,
        op: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("invalid UTF-8 in the string at byte {at}")]
    Utf8 { at: usize },
    #[error("values nest deeper than {MAX_DEPTH} levels at byte {at}")]
    TooDeep { at: usize },
    #[error("memo references at byte {at} copy more values than the stream could describe")]
    TooLarge { at: usize },
}

/// Deeper values are refused: dropping or cloning them recurses, and no PyTorch file nests
/// more than a dozen levels.
pub const MAX_DEPTH: u32 = 256;

/// Rebuild the value a pickle stream describes, without importing or calling anything.
pub fn load(data: &[u8]) -> Result<Value, PickleError> {
    Machine::new(data).run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Byte offset of the opcode being run, for messages.
    at: usize,
    stack: Vec<Value>,
    /// Nesting depth of each stack value (0 for scalars and empty containers).
    depth: Vec<u32>,
    /// Deepest value popped by the opcode being run: what it builds nests one level deeper.
    popped: Option<u32>,
    marks: Vec<usize>,
    memo: HashMap<u32, (Value, u32)>,
    /// Values the memo may still copy. A value read back k times is copied k times, so a
    /// stream of a few bytes could otherwise ask for exponentially many (Python shares them).
    copy_budget: u64,
    /// Memo entries whose object still sits on the stack (`(stack index, key)`, sorted by index).
    /// Pickle memoizes a container *before* filling it, so a copy taken at `BINPUT` time would
    /// be empty; the copy is taken when the object leaves the stack, complete.
    live: Vec<(usize, u32)>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            at: 0,
            stack: Vec::new(),
            depth: Vec::new(),
            popped: None,
            marks: Vec::new(),
            memo: HashMap::new(),
            copy_budget: (data.len() as u64).saturating_mul(64).max(1 << 20),
            live: Vec::new(),
        }
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            self.at = self.pos;
            self.popped = None;
            let Some(&op) = self.data.get(self.pos) else {
                return Err(PickleError::NoStop);
            };
            self.pos += 1;
            self.step(op)?;
            if self.depth.last().is_some_and(|&d| d > MAX_DEPTH) {
                return Err(PickleError::TooDeep { at: self.at });
            }
            if op == b'.' {
                return self.pop("STOP");
            }
        }
    }

    /// Run one opcode (STOP is left to the caller).
    fn step(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            0x80 => {
                // PROTO
                let v = self.u8()?;
                if v > 5 {
                    return Err(PickleError::Protocol(v));
                }
            }
            0x95 => {
                // FRAME: a length hint only.
                self.bytes(8)?;
            }
            b'.' => {}
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop("POP")?;
            }
            b'1' => {
                self.pop_mark("POP_MARK")?;
            }
            b'2' => {
                let top = self.top("DUP")?.clone();
                let d = self.depth.last().copied().unwrap_or(0);
                self.push_with_depth(top, d);
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let b = self.bytes(4)?;
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.push(Value::Int(v.into()));
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let b = self.bytes(2)?;
                self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]).into()));
            }
            0x8a => {
                // LONG1
                let n = usize::from(self.u8()?);
                let b = self.bytes(n)?;
                self.push(long(b));
            }
            0x8b => {
                // LONG4
                let n = self.len_u32()?;
                let b = self.bytes(n)?;
                self.push(long(b));
            }
            b'G' => {
                let b = self.bytes(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                self.push(Value::Float(f64::from_be_bytes(a)));
            }
            b'X' => {
                let n = self.len_u32()?;
                let s = self.utf8(n)?;
                self.push(Value::Str(s));
            }
            0x8c => {
                // SHORT_BINUNICODE
                let n = usize::from(self.u8()?);
                let s = self.utf8(n)?;
                self.push(Value::Str(s));
            }
            b'T' | b'U' => {
                // BINSTRING / SHORT_BINSTRING: Python 2 `str`.
                let n = if op == b'T' {
                    self.len_u32()?
                } else {
                    usize::from(self.u8()?)
                };
                let b = self.bytes(n)?.to_vec();
                self.push(match String::from_utf8(b) {
                    Ok(s) => Value::Str(s),
                    Err(e) => Value::Bytes(e.into_bytes()),
                });
            }
            b'B' | b'C' => {
                // BINBYTES / SHORT_BINBYTES
                let n = if op == b'B' {
                    self.len_u32()?
                } else {
                    usize::from(self.u8()?)
                };
                let b = self.bytes(n)?.to_vec();
                self.push(Value::Bytes(b));
            }
            b'}' => self.push(Value::Dict(Vec::new())),
            b']' => self.push(Value::List(Vec::new())),
            b')' => self.push(Value::Tuple(Vec::new())),
            b'd' => {
                let items = self.pop_mark("DICT")?;
                let mut d = Vec::with_capacity(items.len() / 2);
                set_items(&mut d, items);
                self.push(Value::Dict(d));
            }
            b'l' => {
                let items = self.pop_mark("LIST")?;
                self.push(Value::List(items));
            }
            b't' => {
                let items = self.pop_mark("TUPLE")?;
                self.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if self.stack.len() < n {
                    return Err(self.underflow("TUPLEn"));
                }
                let items = self.pop_from(self.stack.len() - n);
                self.push(Value::Tuple(items));
            }
            b'a' => {
                let v = self.pop("APPEND")?;
                self.extend_list("APPEND", vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark("APPENDS")?;
                self.extend_list("APPENDS", items)?;
            }
            b's' => {
                let v = self.pop("SETITEM")?;
                let k = self.pop("SETITEM")?;
                self.extend_dict("SETITEM", vec![k, v])?;
            }
            b'u' => {
                let items = self.pop_mark("SETITEMS")?;
                self.extend_dict("SETITEMS", items)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global { module, name });
            }
            0x93 => {
                // STACK_GLOBAL
                let name = self.pop("STACK_GLOBAL")?;
                let module = self.pop("STACK_GLOBAL")?;
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => {
                        self.push(Value::Global { module, name })
                    }
                    (m, n) => {
                        let found = if m.as_str().is_none() {
                            m.type_name()
                        } else {
                            n.type_name()
                        };
                        return Err(self.type_err("STACK_GLOBAL", "two strs", found));
                    }
                }
            }
            b'R' | 0x81 => {
                let (name, kind) = if op == b'R' {
                    ("REDUCE", CallKind::Reduce)
                } else {
                    ("NEWOBJ", CallKind::NewObj)
                };
                let args = self.pop(name)?;
                let callable = self.pop(name)?;
                let empty_args = args.as_seq().is_some_and(|a| a.is_empty());
                // `OrderedDict()` is the one call PyTorch needs to behave like its result:
                // SETITEMS fills it next. Making an empty dict runs nothing.
                let v =
                    if callable.as_global() == Some(("collections", "OrderedDict")) && empty_args {
                        Value::Dict(Vec::new())
                    } else {
                        Value::Object(Box::new(Object {
                            callable,
                            args,
                            kind,
                            state: None,
                        }))
                    };
                self.push(v);
            }
            b'b' => {
                let state = self.pop("BUILD")?;
                let at = self.at;
                match self.top_mut("BUILD")? {
                    Value::Object(o) => o.state = Some(state),
                    // An OrderedDict's BUILD sets attributes such as the state dict's
                    // `_metadata` (per-module versions), which are not mapping items.
                    Value::Dict(_) => {}
                    other => {
                        return Err(PickleError::Type {
                            at,
                            op: "BUILD",
                            expected: "an object or a dict",
                            found: other.type_name(),
                        });
                    }
                }
                self.deepen_top();
            }
            b'Q' => {
                let pid = self.pop("BINPERSID")?;
                self.push(Value::PersistentId(Box::new(pid)));
            }
            b'q' => {
                let k = self.u8()?;
                self.put(k.into())?;
            }
            b'r' => {
                let b = self.bytes(4)?;
                self.put(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
            }
            0x94 => {
                // MEMOIZE: the next free key.
                let k = u32::try_from(self.memo.len() + self.live.len()).unwrap_or(u32::MAX);
                self.put(k)?;
            }
            b'h' => {
                let k = self.u8()?;
                self.get(k.into())?;
            }
            b'j' => {
                let b = self.bytes(4)?;
                self.get(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
            }
            _ => {
                return Err(PickleError::UnknownOpcode {
                    opcode: op,
                    at: self.at,
                });
            }
        }
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated { at: self.at })?;
        let b = &self.data[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.bytes(1)?[0])
    }

    fn len_u32(&mut self) -> Result<usize, PickleError> {
        let b = self.bytes(4)?;
        usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .map_err(|_| PickleError::Truncated { at: self.at })
    }

    fn utf8(&mut self, n: usize) -> Result<String, PickleError> {
        let b = self.bytes(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| PickleError::Utf8 { at: self.at })
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or(PickleError::Truncated { at: self.at })?;
        let s = self.utf8(n)?;
        self.pos += 1;
        Ok(s)
    }

    fn underflow(&self, op: &'static str) -> PickleError {
        PickleError::StackUnderflow { at: self.at, op }
    }

    fn type_err(
        &self,
        op: &'static str,
        expected: &'static str,
        found: &'static str,
    ) -> PickleError {
        PickleError::Type {
            at: self.at,
            op,
            expected,
            found,
        }
    }

    fn top(&self, op: &'static str) -> Result<&Value, PickleError> {
        self.stack.last().ok_or_else(|| self.underflow(op))
    }

    fn top_mut(&mut self, op: &'static str) -> Result<&mut Value, PickleError> {
        let at = self.at;
        self.stack
            .last_mut()
            .ok_or(PickleError::StackUnderflow { at, op })
    }

    /// Copy into the memo every live entry at stack index `index` or above: they are leaving.
    fn retire_from(&mut self, index: usize) {
        while let Some(&(i, key)) = self.live.last() {
            if i < index {
                break;
            }
            self.live.pop();
            if let (Some(v), Some(&d)) = (self.stack.get(i), self.depth.get(i)) {
                self.copy_budget = self.copy_budget.saturating_sub(nodes(v));
                self.memo.insert(key, (v.clone(), d));
            }
        }
    }

    /// Push a value built by this opcode from what it popped (a leaf when it popped nothing).
    fn push(&mut self, v: Value) {
        let d = self.popped.map_or(0, |p| p + 1);
        self.push_with_depth(v, d);
    }

    fn push_with_depth(&mut self, v: Value, d: u32) {
        self.stack.push(v);
        self.depth.push(d);
    }

    /// The top value now also holds what this opcode popped.
    fn deepen_top(&mut self) {
        if let (Some(top), Some(p)) = (self.depth.last_mut(), self.popped) {
            *top = (*top).max(p + 1);
        }
    }

    /// Remove and return the values from stack index `at` up.
    fn pop_from(&mut self, at: usize) -> Vec<Value> {
        self.retire_from(at);
        let deepest = self.depth.split_off(at).into_iter().max();
        self.popped = self.popped.max(deepest);
        self.stack.split_off(at)
    }

    fn pop(&mut self, op: &'static str) -> Result<Value, PickleError> {
        let n = self.stack.len();
        if n == 0 {
            return Err(self.underflow(op));
        }
        let mut v = self.pop_from(n - 1);
        v.pop().ok_or_else(|| self.underflow(op))
    }

    fn pop_mark(&mut self, op: &'static str) -> Result<Vec<Value>, PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or(PickleError::NoMark { at: self.at, op })?;
        if m > self.stack.len() {
            return Err(self.underflow(op));
        }
        Ok(self.pop_from(m))
    }

    fn extend_list(&mut self, op: &'static str, items: Vec<Value>) -> Result<(), PickleError> {
        let at = self.at;
        match self.top_mut(op)? {
            Value::List(l) => {
                l.extend(items);
                self.deepen_top();
                Ok(())
            }
            other => Err(PickleError::Type {
                at,
                op,
                expected: "a list",
                found: other.type_name(),
            }),
        }
    }

    fn extend_dict(&mut self, op: &'static str, items: Vec<Value>) -> Result<(), PickleError> {
        let at = self.at;
        if !items.len().is_multiple_of(2) {
            return Err(PickleError::Type {
                at,
                op,
                expected: "key/value pairs",
                found: "an odd number of items",
            });
        }
        match self.top_mut(op)? {
            Value::Dict(d) => {
                set_items(d, items);
                self.deepen_top();
                Ok(())
            }
            other => Err(PickleError::Type {
                at,
                op,
                expected: "a dict",
                found: other.type_name(),
            }),
        }
    }

    fn put(&mut self, key: u32) -> Result<(), PickleError> {
        let n = self.stack.len();
        if n == 0 {
            return Err(self.underflow("PUT"));
        }
        self.live.retain(|&(_, k)| k != key);
        self.memo.remove(&key);
        self.live.push((n - 1, key));
        Ok(())
    }

    fn get(&mut self, key: u32) -> Result<(), PickleError> {
        let n = match self.live.iter().rev().find(|&&(_, k)| k == key) {
            Some(&(i, _)) => self.stack.get(i).map_or(0, nodes),
            None => self.memo.get(&key).map_or(0, |(v, _)| nodes(v)),
        };
        // Retiring copies are charged too; a budget spent by them shows up here.
        if n > self.copy_budget {
            return Err(PickleError::TooLarge { at: self.at });
        }
        self.copy_budget -= n;
        let v = match self.live.iter().rev().find(|&&(_, k)| k == key) {
            Some(&(i, _)) => self.stack.get(i).cloned().zip(self.depth.get(i).copied()),
            None => self.memo.get(&key).cloned(),
        };
        let (v, d) = v.ok_or(PickleError::MissingMemo { key, at: self.at })?;
        self.push_with_depth(v, d);
        Ok(())
    }
}

/// Number of values in `v`, itself included (recursion bounded by [`MAX_DEPTH`]).
fn nodes(v: &Value) -> u64 {
    1 + match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(nodes).sum(),
        Value::Dict(items) => items.iter().map(|(k, v)| nodes(k) + nodes(v)).sum(),
        Value::Object(o) => nodes(&o.callable) + nodes(&o.args) + o.state.as_ref().map_or(0, nodes),
        Value::PersistentId(pid) => nodes(pid),
        _ => 0,
    }
}

/// Python dict assignment: a repeated key replaces the value in place.
fn set_items(d: &mut Vec<(Value, Value)>, items: Vec<Value>) {
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match d.iter_mut().find(|(old, _)| *old == k) {
            Some(slot) => slot.1 = v,
            None => d.push((k, v)),
        }
    }
}

/// `LONG1`/`LONG4` payload: little-endian two's complement of any length.
fn long(b: &[u8]) -> Value {
    if b.len() > 8 {
        return Value::BigInt(b.to_vec());
    }
    let negative = b.last().is_some_and(|&x| x & 0x80 != 0);
    let mut a = if negative { [0xffu8; 8] } else { [0u8; 8] };
    a[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(a))
}

#[cfg(test)]
mod tests;
