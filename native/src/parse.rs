//! A strict JSON parser into a borrowed tree, with orjson's semantics (RFC 8259 plus orjson's limits).
//!
//! What it holds to, because the Python decoder sees the document through `orjson.loads`:
//!
//! * the input is UTF-8 without a byte order mark, checked as a whole first (surrogates encoded in UTF-8
//!   are invalid UTF-8); `\u` escapes must pair surrogates correctly;
//! * no NaN/Infinity literals, no leading zeros, no trailing commas, only JSON whitespace (space, tab, LF,
//!   CR), nothing after the document;
//! * at most [`MAX_DEPTH`] nested arrays/objects (orjson: 1024 pass, 1025 fail);
//! * an integer literal is an `Int` when it fits i64 or u64, else the nearest double (orjson reads big
//!   integers as floats); a number whose double is infinite (`1e400`) is an error;
//! * duplicate keys of an object keep the position of the first and the value of the last occurrence,
//!   exactly as a Python dict built from the pairs in order.
//!
//! Strings are borrowed from the input unless they contain escapes.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::out::{canonical, fast_decimal};

pub const MAX_DEPTH: usize = 1024;

// A word-sized tag keeps the payload aligned: returning a value then moves whole words (no stalls).
#[derive(Debug)]
#[repr(u64)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    /// The value and, when it is spelled exactly as orjson writes it, that spelling (copied on output).
    Float(f64, Option<&'a str>),
    Str(Cow<'a, str>),
    Arr(Vec<Val<'a>>),
    Obj(Vec<Entry<'a, Val<'a>>>),
}

/// A key and its value; `hash` is [`fx_hash`] of the key (compared before the key when looking for duplicates).
#[derive(Debug)]
pub struct Entry<'a, V> {
    pub hash: u64,
    pub key: Cow<'a, str>,
    pub val: V,
}

impl<'a> Val<'a> {
    /// The value of `key` in an object (the last occurrence, as duplicates are already folded).
    pub fn get(&self, key: &str) -> Option<&Val<'a>> {
        match self {
            Val::Obj(members) => members.iter().find(|m| m.key == key).map(|m| &m.val),
            _ => None,
        }
    }
}

/// A parse error: orjson-like wording and the character offset where it was found.
#[derive(Debug)]
pub struct ParseError {
    pub msg: &'static str,
    pub pos: usize,
}

/// FxHash (rustc's hasher) over the bytes: fast, good enough to tell keys apart before comparing them.
#[inline]
pub fn fx_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = 0;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // The tail as one word, built from up to three loads (no copy through memory).
        let n = rest.len();
        let w = if n >= 4 {
            let lo = u64::from(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]));
            let hi = u64::from(u32::from_le_bytes([
                rest[n - 4],
                rest[n - 3],
                rest[n - 2],
                rest[n - 1],
            ]));
            lo | (hi << 32)
        } else {
            u64::from(rest[0]) | (u64::from(rest[n / 2]) << 8) | (u64::from(rest[n - 1]) << 16)
        };
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    (h.rotate_left(5) ^ bytes.len() as u64).wrapping_mul(K)
}

/// Fold duplicate keys as a Python dict does: first position, last value. Quadratic on hashes for small
/// maps (the common case has no duplicate and costs a few comparisons), a hash map beyond that.
pub fn dedup<V>(entries: &mut Vec<Entry<'_, V>>) {
    let n = entries.len();
    if n < 2 {
        return;
    }
    if n <= 32 {
        let mut any = false;
        'outer: for i in 1..n {
            let h = entries[i].hash;
            for e in &entries[..i] {
                if e.hash == h {
                    any = true;
                    break 'outer;
                }
            }
        }
        if !any {
            return;
        }
    }
    // General case: the slot of each key's first occurrence receives the value of its last one.
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(n);
    let mut target: Vec<usize> = Vec::with_capacity(n); // entry i -> index of the first occurrence of its key
    for (i, e) in entries.iter().enumerate() {
        let slot = *first.entry(e.key.as_ref()).or_insert(i);
        target.push(slot);
    }
    drop(first);
    if target.iter().enumerate().all(|(i, &t)| i == t) {
        return; // equal hashes, different keys
    }
    let mut slots: Vec<Option<Entry<'_, V>>> = entries.drain(..).map(Some).collect();
    for i in 0..n {
        let t = target[i];
        if t != i {
            let later = slots[i].take().expect("each entry is moved once");
            let first = slots[t]
                .as_mut()
                .expect("a first occurrence stays in place");
            first.val = later.val;
        }
    }
    entries.extend(slots.into_iter().flatten());
}

pub fn parse(input: &[u8]) -> Result<Val<'_>, ParseError> {
    if input.is_empty() {
        return Err(ParseError {
            msg: "Input is a zero-length, empty document",
            pos: 0,
        });
    }
    if input.starts_with(b"\xEF\xBB\xBF") {
        return Err(ParseError {
            msg: "UTF-8 byte order mark (BOM) is not supported",
            pos: 0,
        });
    }
    let text = match std::str::from_utf8(input) {
        Ok(t) => t,
        Err(e) => {
            return Err(ParseError {
                msg: "str is not valid UTF-8",
                pos: e.valid_up_to(),
            })
        }
    };
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        i: 0,
        depth: 0,
    };
    p.ws();
    if p.i >= p.s.len() {
        return Err(ParseError {
            msg: "input data is empty",
            pos: p.i,
        });
    }
    let v = p.value()?;
    p.ws();
    if p.i < p.s.len() {
        return Err(p.err("unexpected content after document"));
    }
    Ok(v)
}

/// Bytes that end the plain run of a string: the quote, the backslash, control characters.
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, msg: &'static str) -> ParseError {
        // orjson reports a character offset; count characters up to the byte offset.
        let pos = self
            .text
            .get(..self.i.min(self.s.len()))
            .map_or(self.i, |t| t.chars().count());
        ParseError { msg, pos }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.s.get(self.i) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn value(&mut self) -> Result<Val<'a>, ParseError> {
        let Some(&c) = self.s.get(self.i) else {
            return Err(self.err("unexpected end of data"));
        };
        match c {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => Ok(Val::Str(self.string()?)),
            b't' => self.literal(b"true", Val::Bool(true)),
            b'f' => self.literal(b"false", Val::Bool(false)),
            b'n' => self.literal(b"null", Val::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(self.err("unexpected character, expected a JSON value")),
        }
    }

    fn literal(&mut self, word: &'static [u8], v: Val<'a>) -> Result<Val<'a>, ParseError> {
        let end = self.i + word.len();
        if end <= self.s.len() && &self.s[self.i..end] == word {
            self.i = end;
            return Ok(v);
        }
        // Distinguish a truncated literal from a wrong one, like orjson.
        let have = &self.s[self.i..self.s.len().min(end)];
        if have.len() < word.len() && word.starts_with(have) {
            self.i = self.s.len();
            return Err(self.err("unexpected end of data"));
        }
        Err(self.err("invalid literal"))
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("depth limit exceeded"));
        }
        Ok(())
    }

    fn array(&mut self) -> Result<Val<'a>, ParseError> {
        self.enter()?;
        self.i += 1;
        let mut items = Vec::with_capacity(4);
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(Val::Arr(items));
        }
        loop {
            items.push(self.value()?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                    if self.s.get(self.i) == Some(&b']') {
                        return Err(self.err("trailing comma is not allowed"));
                    }
                }
                Some(b']') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(Val::Arr(items));
                }
                Some(_) => return Err(self.err("unexpected character, expected ',' or ']'")),
                None => return Err(self.err("unexpected end of data")),
            }
        }
    }

    fn object(&mut self) -> Result<Val<'a>, ParseError> {
        self.enter()?;
        self.i += 1;
        let mut members: Vec<Entry<'a, Val<'a>>> = Vec::with_capacity(8);
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(Val::Obj(members));
        }
        loop {
            match self.s.get(self.i) {
                Some(b'"') => {}
                Some(_) => return Err(self.err("unexpected character, expected a string key")),
                None => return Err(self.err("unexpected end of data")),
            }
            let key = self.string()?;
            self.ws();
            match self.s.get(self.i) {
                Some(b':') => self.i += 1,
                Some(_) => return Err(self.err("unexpected character, expected ':' after key")),
                None => return Err(self.err("unexpected end of data")),
            }
            self.ws();
            let val = self.value()?;
            members.push(Entry {
                hash: fx_hash(key.as_bytes()),
                key,
                val,
            });
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                    if self.s.get(self.i) == Some(&b'}') {
                        return Err(self.err("trailing comma is not allowed"));
                    }
                }
                Some(b'}') => {
                    self.i += 1;
                    self.depth -= 1;
                    dedup(&mut members);
                    return Ok(Val::Obj(members));
                }
                Some(_) => return Err(self.err("unexpected character, expected ',' or '}'")),
                None => return Err(self.err("unexpected end of data")),
            }
        }
    }

    /// At the opening quote; returns the decoded text and leaves `i` after the closing quote.
    fn string(&mut self) -> Result<Cow<'a, str>, ParseError> {
        self.i += 1;
        let start = self.i;
        let s = self.s;
        let stop = s[start..]
            .iter()
            .position(|&c| STOP[usize::from(c)])
            .map_or(s.len(), |n| start + n);
        self.i = stop;
        match s.get(stop) {
            Some(b'"') => {
                self.i += 1;
                return Ok(Cow::Borrowed(&self.text[start..stop]));
            }
            Some(b'\\') => {}
            Some(_) => return Err(self.err("unexpected control character in string")),
            None => {}
        }
        if self.i >= s.len() {
            return Err(self.err("unexpected end of data"));
        }
        let mut out = String::with_capacity(self.i - start + 16);
        out.push_str(&self.text[start..self.i]);
        loop {
            let Some(&c) = s.get(self.i) else {
                return Err(self.err("unexpected end of data"));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    self.i += 1;
                    let Some(&e) = s.get(self.i) else {
                        return Err(self.err("unexpected end of data"));
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => {
                            self.i -= 2;
                            return Err(self.err("invalid escaped character in string"));
                        }
                    }
                }
                0..=0x1f => return Err(self.err("unexpected control character in string")),
                _ => {
                    // Copy the run up to the next quote, backslash or control character.
                    let run = self.i;
                    while let Some(&c) = s.get(self.i) {
                        if c == b'"' || c == b'\\' || c < 0x20 {
                            break;
                        }
                        self.i += 1;
                    }
                    out.push_str(&self.text[run..self.i]);
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let Some(&c) = self.s.get(self.i) else {
                return Err(self.err("unexpected end of data"));
            };
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(self.err("invalid escaped sequence in string")),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    /// After `\u`: one code point, a surrogate pair joined (a lone surrogate is an error, as in orjson).
    fn unicode_escape(&mut self) -> Result<char, ParseError> {
        let at = self.i;
        let hi = self.hex4()?;
        if (0xDC00..0xE000).contains(&hi) {
            self.i = at;
            return Err(self.err("invalid high surrogate in string"));
        }
        if (0xD800..0xDC00).contains(&hi) {
            if self.s.get(self.i) == Some(&b'\\') && self.s.get(self.i + 1) == Some(&b'u') {
                self.i += 2;
                let lo = self.hex4()?;
                if (0xDC00..0xE000).contains(&lo) {
                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    return char::from_u32(cp).ok_or_else(|| self.err("invalid escaped sequence"));
                }
            }
            self.i = at;
            return Err(self.err("no low surrogate in string"));
        }
        char::from_u32(hi).ok_or_else(|| self.err("invalid escaped sequence"))
    }

    fn number(&mut self) -> Result<Val<'a>, ParseError> {
        let s = self.s;
        let start = self.i;
        let neg = s[self.i] == b'-';
        if neg {
            self.i += 1;
        }
        match s.get(self.i) {
            Some(b'0') => {
                self.i += 1;
                if matches!(s.get(self.i), Some(b'0'..=b'9')) {
                    self.i = start;
                    return Err(self.err("number with leading zero is not allowed"));
                }
            }
            Some(b'1'..=b'9') => {
                while matches!(s.get(self.i), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            Some(_) => {
                self.i = start;
                return Err(self.err("no digit after sign"));
            }
            None => return Err(self.err("unexpected end of data")),
        }
        let int_end = self.i;
        let int_digits = &s[if neg { start + 1 } else { start }..int_end];
        let mut frac: Option<&[u8]> = None;
        if s.get(self.i) == Some(&b'.') {
            self.i += 1;
            let frac_start = self.i;
            if !matches!(s.get(self.i), Some(b'0'..=b'9')) {
                return Err(if self.i >= s.len() {
                    self.err("unexpected end of data")
                } else {
                    self.err("no digit after decimal point")
                });
            }
            while matches!(s.get(self.i), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            frac = Some(&s[frac_start..self.i]);
        }
        let mut has_exp = false;
        if matches!(s.get(self.i), Some(b'e' | b'E')) {
            has_exp = true;
            self.i += 1;
            if matches!(s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !matches!(s.get(self.i), Some(b'0'..=b'9')) {
                return Err(if self.i >= s.len() {
                    self.err("unexpected end of data")
                } else {
                    self.err("no digit after exponent sign")
                });
            }
            while matches!(s.get(self.i), Some(b'0'..=b'9')) {
                self.i += 1;
            }
        }
        let Some(frac) = frac else {
            if !has_exp {
                if let Some(v) = int_value(neg, int_digits) {
                    return Ok(v);
                }
            }
            return self.float_text(start, None);
        };
        if !has_exp {
            if let Some(f) = fast_decimal(neg, int_digits, frac, 0) {
                let copy = canonical(int_digits, Some(frac)).then(|| &self.text[start..self.i]);
                return Ok(Val::Float(f, copy));
            }
        }
        self.float_text(start, None)
    }

    /// The number `text[start..i]` by the general parser (correctly rounded); infinite is an error.
    fn float_text(&mut self, start: usize, copy: Option<&'a str>) -> Result<Val<'a>, ParseError> {
        let f: f64 = self.text[start..self.i]
            .parse()
            .map_err(|_| self.err("invalid number"))?;
        if f.is_infinite() {
            self.i = start;
            return Err(self.err("number is infinity when parsed as double"));
        }
        Ok(Val::Float(f, copy))
    }
}

/// An integer literal as orjson reads it: i64, else u64, else `None` (then it is read as a double).
#[inline]
fn int_value<'a>(neg: bool, digits: &[u8]) -> Option<Val<'a>> {
    if digits.len() > 20 {
        return None;
    }
    let mut acc: u64 = 0;
    for &d in digits {
        acc = acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if !neg {
        return Some(if acc <= i64::MAX as u64 {
            Val::Int(acc as i64)
        } else {
            Val::UInt(acc)
        });
    }
    (acc <= 1u64 << 63).then(|| Val::Int((acc as i64).wrapping_neg()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert!(matches!(
            parse(b"18446744073709551615").unwrap(),
            Val::UInt(u64::MAX)
        ));
        assert!(matches!(
            parse(b"-9223372036854775808").unwrap(),
            Val::Int(i64::MIN)
        ));
        assert!(matches!(
            parse(b"18446744073709551616").unwrap(),
            Val::Float(..)
        ));
        assert!(matches!(parse(b"-0").unwrap(), Val::Int(0)));
        assert!(parse(b"1e400").is_err() && parse(b"01").is_err() && parse(b"1.").is_err());
    }

    #[test]
    fn duplicates_keep_first_position_last_value() {
        let v = parse(br#"{"a":1,"b":2,"a":3}"#).unwrap();
        let Val::Obj(m) = v else { panic!() };
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].key, "a");
        assert!(matches!(m[0].val, Val::Int(3)));
    }

    #[test]
    fn depth_limit() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
        let bad = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse(bad.as_bytes()).is_err());
    }

    #[test]
    fn escapes_and_surrogates() {
        let Val::Str(s) = parse(br#""a\u00e9\ud83d\ude00\n""#).unwrap() else {
            panic!()
        };
        assert_eq!(s, "a\u{e9}\u{1F600}\n");
        assert!(parse(br#""\ud800""#).is_err() && parse(br#""\udc00""#).is_err());
        assert!(parse(b"\"\xed\xa0\x80\"").is_err());
    }
}
