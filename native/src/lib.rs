//! `enrich_native`: the telemetry decoder of `enrich.telemetry`, in Rust.
//!
//! `Decoder(...).decode(value, max_bytes)` returns what `enrich.telemetry.decode_telemetry_py` returns —
//! a `Telemetry` (device id, ts, seq, the flat coerced signals) — plus the signals' JSON exactly as
//! `orjson.dumps(signals)` writes it, or raises the same `DecodeError` (reason, field path and, except for
//! the wording of JSON syntax errors, message). The Python decoder is the reference; this module mirrors
//! it step by step (see `Decoder::decode`), and `tests/unit/test_native_telemetry.py` holds the two
//! together over a large corpus. What defines the schema (known signals and kinds, boolean words, the
//! error type, the message formatter) is passed in by the Python module, never restated here.

mod out;
mod parse;

use std::borrow::Cow;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyList, PyString};

use out::{simple_float, write_float_text, write_int, write_str, write_uint};
use parse::{dedup, fx_hash, parse, Entry, Val};

const FLOAT: u8 = 0;
const BOOL: u8 = 1;
const STRING: u8 = 2;
const PREFIX: &str = "Vehicle.";
const MAX_DEVICE_CHARS: usize = 64;

/// A known signal: its kind, the interned Python key, and the key as JSON (`"path":`).
struct Known {
    path: Box<str>,
    hash: u64,
    kind: u8,
    key: Py<PyString>,
    json_key: Box<[u8]>,
}

/// Where a flat path is: a key of the document, or a range of the flattened paths' buffer.
enum Span<'v> {
    Raw(&'v str),
    Arena(usize, usize),
}

/// The value a signal leaves decoding with.
enum Out<'v, 'a> {
    Keep(&'v Val<'a>),
    Float(f64, Option<&'v str>),
    Bool(bool),
    Null,
    Text(Bound<'v, PyString>),
}

#[pyclass(frozen, module = "enrich_native")]
struct Decoder {
    known: Vec<Known>,
    slots: Vec<u32>, // open addressing over `known`: 0 empty, else index + 1
    shift: u32,
    max_nesting: usize,
    true_words: Vec<String>,
    false_words: Vec<String>,
    telemetry: Py<PyAny>,
    error: Py<PyAny>,
    short: Py<PyAny>,
    fallback: Py<PyAny>,
    tuple_new: Py<PyAny>,
    true_set: Py<PyAny>,
    false_set: Py<PyAny>,
}

type Res<T> = Result<T, PyErr>;

#[pymethods]
impl Decoder {
    /// `kinds`: VSS path -> 0 (float), 1 (bool) or 2 (string). `telemetry`: the result class (a named
    /// tuple of device_id, ts, seq, signals, signals_json). `error`: the exception class, called as
    /// `error(message, reason=..., field_path=...)`. `short`: formats a value for a message. `fallback`:
    /// the Python decoder, used for inputs that are not `bytes`.
    #[new]
    #[pyo3(signature = (kinds, *, telemetry, error, short, fallback, true_words, false_words, max_nesting))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        kinds: &Bound<'_, PyDict>,
        telemetry: Py<PyAny>,
        error: Py<PyAny>,
        short: Py<PyAny>,
        fallback: Py<PyAny>,
        true_words: Bound<'_, PyAny>,
        false_words: Bound<'_, PyAny>,
        max_nesting: usize,
    ) -> Res<Self> {
        let mut known = Vec::new();
        for (k, v) in kinds.iter() {
            let path: String = k.extract()?;
            let kind: u8 = v.extract()?;
            if kind > STRING || !path.starts_with(PREFIX) {
                return Err(PyValueError::new_err(format!(
                    "bad known signal {path:?} of kind {kind}"
                )));
            }
            let mut json_key = Vec::new();
            write_str(&mut json_key, &path);
            json_key.push(b':');
            known.push(Known {
                hash: fx_hash(path.as_bytes()),
                key: PyString::intern(py, &path).unbind(),
                path: path.into_boxed_str(),
                kind,
                json_key: json_key.into_boxed_slice(),
            });
        }
        let bits = (known.len() * 4)
            .next_power_of_two()
            .trailing_zeros()
            .max(4);
        let mut slots = vec![0u32; 1 << bits];
        let shift = 64 - bits;
        for (i, k) in known.iter().enumerate() {
            let mut s = (k.hash >> shift) as usize;
            while slots[s] != 0 {
                s = (s + 1) & (slots.len() - 1);
            }
            slots[s] =
                u32::try_from(i + 1).map_err(|_| PyValueError::new_err("too many signals"))?;
        }
        let words = |set: &Bound<'_, PyAny>| -> Res<Vec<String>> {
            let mut out = Vec::new();
            for w in set.try_iter()? {
                let w: String = w?.extract()?;
                if !w.is_ascii() || w != w.to_ascii_lowercase() || w.trim() != w {
                    return Err(PyValueError::new_err(format!(
                        "boolean words are lower-case ASCII: {w:?}"
                    )));
                }
                out.push(w);
            }
            Ok(out)
        };
        let tuple_new = py
            .get_type::<pyo3::types::PyTuple>()
            .getattr("__new__")?
            .unbind();
        Ok(Decoder {
            true_words: words(&true_words)?,
            false_words: words(&false_words)?,
            true_set: true_words.unbind(),
            false_set: false_words.unbind(),
            known,
            slots,
            shift,
            max_nesting,
            telemetry,
            error,
            short,
            fallback,
            tuple_new,
        })
    }

    /// One message → `Telemetry`, or `DecodeError`; the steps follow `decode_telemetry_py` in order.
    fn decode<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
        max_bytes: i64,
    ) -> Res<Bound<'py, PyAny>> {
        if value.is_none() {
            return Err(self.err(py, "null message".into(), "decode_error", None));
        }
        let Ok(bytes) = value.cast::<PyBytes>() else {
            return self.fallback.bind(py).call1((value, max_bytes));
        };
        let data = bytes.as_bytes();
        if data.len() as i64 > max_bytes {
            let msg = format!(
                "message of {} bytes exceeds the limit of {max_bytes}",
                data.len()
            );
            return Err(self.err(py, msg, "too_large", None));
        }
        let doc = match parse(data) {
            Ok(doc) => doc,
            Err(e) => {
                let (line, col) = line_col(data, e.pos);
                let msg = format!(
                    "not JSON: {}: line {line} column {col} (char {})",
                    e.msg, e.pos
                );
                return Err(self.err(py, msg, "not_json", None));
            }
        };
        if !matches!(doc, Val::Obj(_)) {
            return Err(self.err(py, "not a JSON object".into(), "schema_error", None));
        }
        let device = match doc.get("device_id") {
            Some(Val::Str(s)) if !s.is_empty() && s.chars().count() <= MAX_DEVICE_CHARS => s,
            _ => {
                let msg = "device_id must be a non-empty string of at most 64 characters";
                return Err(self.schema(py, msg.into(), "device_id".into()));
            }
        };
        let ts = match doc.get("ts") {
            Some(v @ Val::Int(i)) if *i > 0 => v,
            Some(v @ Val::UInt(_)) => v,
            _ => return Err(self.schema(py, "ts must be epoch milliseconds".into(), "ts".into())),
        };
        let seq = match doc.get("seq") {
            Some(v @ Val::Int(i)) if *i >= 0 => v,
            Some(v @ Val::UInt(_)) => v,
            _ => {
                return Err(self.schema(
                    py,
                    "seq must be a non-negative integer".into(),
                    "seq".into(),
                ))
            }
        };
        let Some(Val::Obj(raw)) = doc.get("signals") else {
            return Err(self.schema(py, "signals must be an object".into(), "signals".into()));
        };
        let mut arena = String::new();
        let flat = self.flatten(py, raw, &mut arena)?;
        let signals = PyDict::new(py);
        let mut json = Vec::with_capacity(data.len());
        json.push(b'{');
        for (n, e) in flat.iter().enumerate() {
            let found = self.lookup(e.hash, &e.key);
            let out = self.coerce(py, &e.key, found.map(|k| k.kind), e.val)?;
            if n > 0 {
                json.push(b',');
            }
            let key = match found {
                Some(k) => {
                    json.extend_from_slice(&k.json_key);
                    k.key.bind(py).clone()
                }
                None => {
                    write_str(&mut json, &e.key);
                    json.push(b':');
                    PyString::new(py, &e.key)
                }
            };
            let obj = match out {
                Out::Keep(v) => {
                    write_scalar(&mut json, v);
                    to_py(py, v)?
                }
                Out::Float(f, text) => {
                    write_float_text(&mut json, f, text);
                    PyFloat::new(py, f).into_any()
                }
                Out::Bool(b) => {
                    json.extend_from_slice(if b { b"true" } else { b"false" });
                    pyo3::types::PyBool::new(py, b).to_owned().into_any()
                }
                Out::Null => {
                    json.extend_from_slice(b"null");
                    py.None().into_bound(py)
                }
                Out::Text(s) => {
                    write_str(&mut json, &s.to_cow()?);
                    s.into_any()
                }
            };
            // SAFETY: both are valid objects held for the duration of the call; SetItem takes its own refs.
            if unsafe { ffi::PyDict_SetItem(signals.as_ptr(), key.as_ptr(), obj.as_ptr()) } != 0 {
                return Err(PyErr::fetch(py));
            }
        }
        json.push(b'}');
        let fields = (
            PyString::new(py, device),
            to_py(py, ts)?,
            to_py(py, seq)?,
            signals,
            PyBytes::new(py, &json),
        );
        self.tuple_new
            .bind(py)
            .call1((self.telemetry.bind(py), fields))
    }
}

impl Decoder {
    fn err(&self, py: Python<'_>, msg: String, reason: &str, field: Option<String>) -> PyErr {
        let kwargs = PyDict::new(py);
        let made = kwargs
            .set_item("reason", reason)
            .and_then(|()| kwargs.set_item("field_path", field))
            .and_then(|()| self.error.bind(py).call((msg,), Some(&kwargs)));
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        }
    }

    fn schema(&self, py: Python<'_>, msg: String, field: String) -> PyErr {
        self.err(py, msg, "schema_error", Some(field))
    }

    fn signal_error(&self, py: Python<'_>, msg: String, path: &str) -> PyErr {
        self.schema(py, msg, format!("signals.{path}"))
    }

    fn lookup(&self, hash: u64, path: &str) -> Option<&Known> {
        let mask = self.slots.len() - 1;
        let mut s = (hash >> self.shift) as usize;
        loop {
            let slot = self.slots[s];
            if slot == 0 {
                return None;
            }
            let k = &self.known[slot as usize - 1];
            if k.hash == hash && &*k.path == path {
                return Some(k);
            }
            s = (s + 1) & mask;
        }
    }

    fn is_known(&self, path: &str) -> bool {
        self.lookup(fx_hash(path.as_bytes()), path).is_some()
    }

    /// The signals as flat paths in document order (a nested tree only under `Vehicle`, flattened
    /// depth-first; later duplicates overwrite in place), as `decode_telemetry_py` builds `flat`. Paths
    /// made by flattening live in `arena` (one buffer, not one allocation per signal).
    fn flatten<'v, 'a>(
        &self,
        py: Python<'_>,
        raw: &'v [Entry<'a, Val<'a>>],
        arena: &'v mut String,
    ) -> Res<Vec<Entry<'v, &'v Val<'a>>>> {
        if !raw.iter().any(|m| m.key == "Vehicle") {
            return Ok(raw
                .iter()
                .map(|m| Entry {
                    hash: m.hash,
                    key: Cow::Borrowed(m.key.as_ref()),
                    val: &m.val,
                })
                .collect());
        }
        let mut spans: Vec<(u64, Span<'v>, &'v Val<'a>)> = Vec::with_capacity(32);
        let mut prefix = String::with_capacity(128);
        for m in raw {
            if let Val::Obj(children) = &m.val {
                if m.key != "Vehicle" {
                    let msg = "nested signals start at Vehicle";
                    return Err(self.signal_error(py, msg.into(), &m.key));
                }
                prefix.clear();
                prefix.push_str(PREFIX);
                self.flatten_into(py, children, &mut prefix, 1, arena, &mut spans)?;
            } else {
                spans.push((m.hash, Span::Raw(m.key.as_ref()), &m.val));
            }
        }
        let arena: &'v str = arena;
        let mut flat: Vec<Entry<'v, &'v Val<'a>>> = spans
            .into_iter()
            .map(|(hash, span, val)| {
                let key = match span {
                    Span::Raw(k) => k,
                    Span::Arena(a, b) => &arena[a..b],
                };
                Entry {
                    hash,
                    key: Cow::Borrowed(key),
                    val,
                }
            })
            .collect();
        dedup(&mut flat);
        Ok(flat)
    }

    /// `prefix` ends with a dot and holds `depth` segments; known signals are leaves.
    fn flatten_into<'v, 'a>(
        &self,
        py: Python<'_>,
        node: &'v [Entry<'a, Val<'a>>],
        prefix: &mut String,
        depth: usize,
        arena: &mut String,
        out: &mut Vec<(u64, Span<'v>, &'v Val<'a>)>,
    ) -> Res<()> {
        let base = prefix.len();
        for m in node {
            prefix.push_str(&m.key);
            if let Val::Obj(children) = &m.val {
                if self.is_known(prefix) {
                    let msg = "a known signal must be a scalar, got an object";
                    return Err(self.signal_error(py, msg.into(), prefix));
                }
                if depth >= self.max_nesting {
                    let msg = format!("signals nest deeper than {} levels", self.max_nesting);
                    return Err(self.signal_error(py, msg, prefix));
                }
                prefix.push('.');
                self.flatten_into(py, children, prefix, depth + 1, arena, out)?;
            } else {
                let at = arena.len();
                arena.push_str(prefix);
                out.push((
                    fx_hash(prefix.as_bytes()),
                    Span::Arena(at, arena.len()),
                    &m.val,
                ));
            }
            prefix.truncate(base);
        }
        Ok(())
    }

    /// The value a signal keeps (the loop of `decode_telemetry_py` and its `_coerce`).
    fn coerce<'v, 'a>(
        &self,
        py: Python<'v>,
        path: &str,
        kind: Option<u8>,
        v: &'v Val<'a>,
    ) -> Res<Out<'v, 'a>> {
        let container = matches!(v, Val::Arr(_) | Val::Obj(_));
        match (kind, v) {
            (Some(FLOAT), Val::Float(..))
            | (Some(BOOL), Val::Bool(_))
            | (Some(STRING), Val::Str(_)) => return Ok(Out::Keep(v)),
            (None, _) if !container && path.starts_with(PREFIX) => return Ok(Out::Keep(v)),
            (Some(FLOAT), Val::Str(s)) => {
                if let Some((f, text)) = py_float(py, s)? {
                    return Ok(Out::Float(f, text));
                }
            }
            _ => {}
        }
        if !path.starts_with(PREFIX) {
            return Err(self.signal_error(py, "signal paths start with Vehicle.".into(), path));
        }
        match (kind, v) {
            (Some(FLOAT), Val::Int(_) | Val::UInt(_)) => Ok(Out::Keep(v)),
            (Some(FLOAT), Val::Null) => Ok(Out::Null),
            (Some(FLOAT), _) => Err(self.signal_error(
                py,
                format!("expected a number, got {}", self.short(py, v)?),
                path,
            )),
            (Some(BOOL), Val::Null) => Ok(Out::Null),
            (Some(BOOL), Val::Str(_) | Val::Int(_) | Val::UInt(_) | Val::Float(..)) => {
                match self.bool_word(py, v)? {
                    Some(b) => Ok(Out::Bool(b)),
                    None => Err(self.signal_error(
                        py,
                        format!("expected a boolean, got {}", self.short(py, v)?),
                        path,
                    )),
                }
            }
            (Some(BOOL), _) => Err(self.signal_error(
                py,
                format!("expected a boolean, got {}", self.short(py, v)?),
                path,
            )),
            (_, Val::Arr(_) | Val::Obj(_)) => {
                Err(self.signal_error(py, "signal values must be scalars".into(), path))
            }
            (Some(STRING), Val::Null) | (None, _) => Ok(Out::Keep(v)),
            (Some(STRING), _) => Ok(Out::Text(to_py(py, v)?.str()?)),
            (Some(_), _) => Ok(Out::Keep(v)),
        }
    }

    /// `str(value).strip().lower()` among the true/false words (ASCII in Rust, anything else by Python).
    fn bool_word(&self, py: Python<'_>, v: &Val<'_>) -> Res<Option<bool>> {
        let text: String = match v {
            Val::Str(s) if s.is_ascii() => s.to_string(),
            Val::Int(i) => i.to_string(),
            Val::UInt(u) => u.to_string(),
            _ => {
                let norm = to_py(py, v)?
                    .str()?
                    .call_method0("strip")?
                    .call_method0("lower")?;
                if self.true_set.bind(py).contains(&norm)? {
                    return Ok(Some(true));
                }
                return Ok(if self.false_set.bind(py).contains(&norm)? {
                    Some(false)
                } else {
                    None
                });
            }
        };
        let t = text
            .trim_matches(|c: char| {
                c == ' ' || ('\t'..='\r').contains(&c) || ('\x1c'..='\x1f').contains(&c)
            })
            .to_ascii_lowercase();
        if self.true_words.contains(&t) {
            return Ok(Some(true));
        }
        Ok(if self.false_words.contains(&t) {
            Some(false)
        } else {
            None
        })
    }

    fn short(&self, py: Python<'_>, v: &Val<'_>) -> Res<String> {
        self.short.bind(py).call1((to_py(py, v)?,))?.extract()
    }
}

/// Python's `float(text)`: the common spellings in Rust, the rest (`inf`, `1_000`, non-ASCII digits) by
/// CPython itself. `None` where Python raises ValueError.
fn py_float<'s>(py: Python<'_>, s: &'s str) -> Res<Option<(f64, Option<&'s str>)>> {
    if let Some(found) = simple_float(s) {
        return Ok(Some(found));
    }
    let text = PyString::new(py, s);
    // SAFETY: a valid str object; PyFloat_FromString returns a new reference or NULL with an exception set.
    let ptr = unsafe { ffi::PyFloat_FromString(text.as_ptr()) };
    if ptr.is_null() {
        let err = PyErr::fetch(py);
        if err.is_instance_of::<PyValueError>(py) {
            return Ok(None);
        }
        return Err(err);
    }
    // SAFETY: ptr is a new reference to a float.
    let f = unsafe { Bound::from_owned_ptr(py, ptr) };
    Ok(Some((f.extract::<f64>()?, None)))
}

fn write_scalar(out: &mut Vec<u8>, v: &Val<'_>) {
    match v {
        Val::Null => out.extend_from_slice(b"null"),
        Val::Bool(true) => out.extend_from_slice(b"true"),
        Val::Bool(false) => out.extend_from_slice(b"false"),
        Val::Int(i) => write_int(out, *i),
        Val::UInt(u) => write_uint(out, *u),
        Val::Float(f, text) => write_float_text(out, *f, *text),
        Val::Str(s) => write_str(out, s),
        Val::Arr(_) | Val::Obj(_) => {
            unreachable!("containers are rejected before they are written")
        }
    }
}

/// The Python object `orjson.loads` makes of a value.
fn to_py<'py>(py: Python<'py>, v: &Val<'_>) -> Res<Bound<'py, PyAny>> {
    Ok(match v {
        Val::Null => py.None().into_bound(py),
        Val::Bool(b) => pyo3::types::PyBool::new(py, *b).to_owned().into_any(),
        Val::Int(i) => i.into_pyobject(py)?.into_any(),
        Val::UInt(u) => u.into_pyobject(py)?.into_any(),
        Val::Float(f, _) => PyFloat::new(py, *f).into_any(),
        Val::Str(s) => PyString::new(py, s).into_any(),
        Val::Arr(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Val::Obj(members) => {
            let dict = PyDict::new(py);
            for m in members {
                dict.set_item(PyString::new(py, &m.key), to_py(py, &m.val)?)?;
            }
            dict.into_any()
        }
    })
}

/// 1-based line and column of a character offset, as orjson reports them.
fn line_col(data: &[u8], pos: usize) -> (usize, usize) {
    let text = String::from_utf8_lossy(data);
    let mut line = 1;
    let mut col = 1;
    for c in text.chars().take(pos) {
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

#[pymodule]
fn enrich_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Decoder>()?;
    Ok(())
}
