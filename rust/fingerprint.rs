//! The request fingerprint: SHA-256 over a canonical encoding of named fields.
//!
//! Canonical means: fields sorted by name (so JSON key order cannot matter), every name and value
//! length-prefixed and every value type-tagged (so `("a","bc")` != `("ab","c")`, `None` != `""` !=
//! `b""`, `1` != `"1"`), and a version label up front so a future encoding can never collide with
//! this one.

use sha2::{Digest, Sha256};

const DOMAIN: &[u8] = b"cloudlayer/request-fingerprint/v1\0";

/// One field's value, borrowed from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    None,
    Bool(bool),
    Int(i128),
    Str(&'a str),
    Bytes(&'a [u8]),
}

/// Two fields had the same name (which one is not said: names are ours, but keep errors plain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateName(pub String);

/// Digest of the fields, independent of their order. Sorts `fields` in place.
pub fn fingerprint(fields: &mut [(&str, Value<'_>)]) -> Result<[u8; 32], DuplicateName> {
    fields.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    if let Some(w) = fields
        .windows(2)
        .find(|w| matches!(w, [a, b] if a.0 == b.0))
    {
        let name = w.first().map(|f| f.0).unwrap_or_default();
        return Err(DuplicateName(name.to_owned()));
    }
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update((fields.len() as u64).to_be_bytes());
    for (name, value) in fields.iter() {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        match value {
            Value::None => h.update(b"N"),
            Value::Bool(b) => h.update(if *b { b"T" } else { b"F" }),
            Value::Int(i) => {
                h.update(b"I");
                h.update(i.to_be_bytes());
            }
            Value::Str(s) => {
                h.update(b"S");
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
            Value::Bytes(b) => {
                h.update(b"B");
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
        }
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(fields: &[(&str, Value<'_>)]) -> [u8; 32] {
        let mut v = fields.to_vec();
        fingerprint(&mut v).expect("no duplicates")
    }

    #[test]
    fn order_independent() {
        let a = fp(&[("amount", Value::Int(100)), ("currency", Value::Str("978"))]);
        let b = fp(&[("currency", Value::Str("978")), ("amount", Value::Int(100))]);
        assert_eq!(a, b);
    }

    #[test]
    fn unambiguous() {
        let distinct = [
            fp(&[("a", Value::Str("bc"))]),
            fp(&[("ab", Value::Str("c"))]),
            fp(&[("a", Value::None)]),
            fp(&[("a", Value::Str(""))]),
            fp(&[("a", Value::Bytes(b""))]),
            fp(&[("a", Value::Int(1))]),
            fp(&[("a", Value::Str("1"))]),
            fp(&[("a", Value::Bool(true))]),
            fp(&[("a", Value::Bool(false))]),
            fp(&[("a", Value::Int(0))]),
            fp(&[]),
            fp(&[("a", Value::Str("b")), ("c", Value::None)]),
            fp(&[("a", Value::Str("b"))]),
        ];
        for (i, x) in distinct.iter().enumerate() {
            for y in distinct.iter().skip(i + 1) {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn duplicates_rejected() {
        let mut v = vec![("a", Value::Int(1)), ("a", Value::Int(2))];
        assert_eq!(fingerprint(&mut v), Err(DuplicateName("a".into())));
    }
}
