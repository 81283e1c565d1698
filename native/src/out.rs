//! JSON text exactly as `orjson.dumps` writes the same Python values, and Python's `float()` on strings.
//!
//! orjson's rules, checked against orjson by the equivalence tests:
//! * floats: the shortest digits that round-trip (as `repr`), fixed notation for decimal exponents
//!   -5..=15 (`0.00001`, `1000000000000000.0`), else scientific with a signed exponent (`1e-7`,
//!   `1e+16`); NaN and infinities are written `null`;
//! * strings: `"` `\` and control characters escaped (`\b \t \n \f \r`, others `\u00XX`), everything else
//!   (including `/`, DEL and non-ASCII) written as UTF-8.

/// Append `f` as orjson writes a Python float.
#[inline]
pub fn write_float(out: &mut Vec<u8>, f: f64) {
    if !f.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let mut buf = ryu::Buffer::new();
    let text = buf.format_finite(f).as_bytes();
    // ryu's layout matches orjson's except for the sign of a positive exponent (`1e16` vs `1e+16`).
    match text.iter().position(|&c| c == b'e') {
        Some(e) if text.get(e + 1) != Some(&b'-') => {
            out.extend_from_slice(&text[..=e]);
            out.push(b'+');
            out.extend_from_slice(&text[e + 1..]);
        }
        _ => out.extend_from_slice(text),
    }
}

#[inline]
pub fn write_int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

#[inline]
pub fn write_uint(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Append `s` as a JSON string.
#[inline]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Python's `float(text)` for the common spellings of a number: ASCII, optional sign, digits with an
/// optional fraction and exponent, surrounded by ASCII whitespace. `None` means "ask Python" (underscores,
/// `inf`/`nan`, non-ASCII digits or spaces, or not a number at all), so the result always equals Python's.
pub fn simple_float(text: &str) -> Option<(f64, Option<&str>)> {
    let b = text.as_bytes();
    // Only the spaces float() surely strips; any other byte sends the text to Python.
    let is_space = |c: u8| c == b' ' || c == b'\t' || c == b'\n' || c == b'\r';
    let mut lo = 0;
    let mut hi = b.len();
    while lo < hi && is_space(b[lo]) {
        lo += 1;
    }
    while hi > lo && is_space(b[hi - 1]) {
        hi -= 1;
    }
    let t = &b[lo..hi];
    let mut i = 0;
    let neg = t.first() == Some(&b'-');
    if matches!(t.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < t.len() && t[i].is_ascii_digit() {
        i += 1;
    }
    let int = &t[int_start..i];
    let mut frac: Option<&[u8]> = None;
    if i < t.len() && t[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < t.len() && t[i].is_ascii_digit() {
            i += 1;
        }
        frac = Some(&t[frac_start..i]);
    }
    if int.is_empty() && frac.is_none_or(<[u8]>::is_empty) {
        return None;
    }
    let mut has_exp = false;
    if i < t.len() && (t[i] == b'e' || t[i] == b'E') {
        has_exp = true;
        i += 1;
        if i < t.len() && (t[i] == b'+' || t[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < t.len() && t[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return None;
        }
    }
    if i != t.len() {
        return None;
    }
    let text = std::str::from_utf8(t).ok()?;
    if !has_exp {
        if let Some(f) = fast_decimal(neg, int, frac.unwrap_or(b""), 0) {
            let plus = t.first() == Some(&b'+');
            let copy = (!plus && canonical(int, frac)).then_some(text);
            return Some((f, copy));
        }
    }
    // Both Rust and CPython round correctly, so the same text gives the same double.
    Some((text.parse().ok()?, None))
}

/// Append the JSON of a float given, when known, the canonical text of its value (see [`canonical`]).
#[inline]
pub fn write_float_text(out: &mut Vec<u8>, f: f64, text: Option<&str>) {
    match text {
        Some(t) if f.is_finite() => {
            out.extend_from_slice(t.as_bytes());
            if !t.contains('.') {
                out.extend_from_slice(b".0");
            }
        }
        _ => write_float(out, f),
    }
}

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The double nearest to `[-]int.frac × 10^exp` when it can be had exactly (Clinger's fast path: at most 19
/// digits, a mantissa below 2^53 and |10-exponent| ≤ 22, where one IEEE multiplication or division is
/// correctly rounded); `None` sends the caller to the general (also correctly rounded) parser.
#[inline]
pub fn fast_decimal(neg: bool, int: &[u8], frac: &[u8], exp: i64) -> Option<f64> {
    if int.len() + frac.len() > 19 {
        return None;
    }
    let mut m: u64 = 0;
    for &d in int.iter().chain(frac) {
        m = m * 10 + u64::from(d - b'0');
    }
    if m >= 1 << 53 {
        return None;
    }
    let e = exp - frac.len() as i64;
    let mut f = m as f64;
    if e >= 0 {
        f *= *POW10.get(usize::try_from(e).ok()?)?;
    } else {
        f /= *POW10.get(usize::try_from(-e).ok()?)?;
    }
    Some(if neg { -f } else { f })
}

/// Whether `[-]int.frac` (no exponent; `frac` None for an integer spelling) is exactly the text orjson
/// writes for the double it denotes, so it can be copied instead of formatted: at most 15 significant
/// digits (then the spelling is the unique shortest one that round-trips), no redundant zeros, and a
/// decimal exponent in orjson's fixed-notation range (-5..=15). Callers append ".0" when `frac` is None.
#[inline]
pub fn canonical(int: &[u8], frac: Option<&[u8]>) -> bool {
    if int.is_empty() || (int.len() > 1 && int[0] == b'0') || int.len() > 16 {
        return false;
    }
    let int_sig = if int == b"0" { 0 } else { int.len() };
    let Some(frac) = frac else {
        return int_sig <= 15;
    };
    if frac.is_empty() {
        return false;
    }
    if frac == b"0" {
        return int_sig <= 15;
    }
    if frac[frac.len() - 1] == b'0' {
        return false;
    }
    if int_sig == 0 {
        let zeros = frac.iter().take_while(|&&c| c == b'0').count();
        return zeros <= 4 && frac.len() - zeros <= 15;
    }
    int_sig + frac.len() <= 15
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64) -> String {
        let mut o = Vec::new();
        write_float(&mut o, v);
        String::from_utf8(o).unwrap()
    }

    #[test]
    fn floats_like_orjson() {
        assert_eq!(f(1e16), "1e+16");
        assert_eq!(f(1e15), "1000000000000000.0");
        assert_eq!(f(1e-5), "0.00001");
        assert_eq!(f(1e-7), "1e-7");
        assert_eq!(f(-0.0), "-0.0");
        assert_eq!(f(12.0), "12.0");
        assert_eq!(f(f64::NAN), "null");
        assert_eq!(f(1.2345678901234568e17), "1.2345678901234568e+17");
    }

    #[test]
    fn strings_like_orjson() {
        let mut o = Vec::new();
        write_str(&mut o, "\u{1}\u{1f}\"\\/\u{7f}\u{e9}\u{8}\u{c}\n\r\t");
        assert_eq!(
            o,
            b"\"\\u0001\\u001f\\\"\\\\/\x7f\xc3\xa9\\b\\f\\n\\r\\t\"".to_vec()
        );
    }

    #[test]
    fn simple_floats() {
        assert_eq!(simple_float(" 12.5 "), Some((12.5, Some("12.5"))));
        assert_eq!(simple_float("1e3"), Some((1000.0, None)));
        assert_eq!(simple_float(".5"), Some((0.5, None)));
        assert_eq!(simple_float("5."), Some((5.0, None)));
        assert_eq!(simple_float("232"), Some((232.0, Some("232"))));
        assert_eq!(simple_float("0.000001"), Some((0.000001, None)));
        assert_eq!(simple_float("1_0"), None);
        assert_eq!(simple_float("nan"), None);
        assert_eq!(simple_float("."), None);
        assert_eq!(simple_float("1e"), None);
        assert_eq!(simple_float(""), None);
    }
}
