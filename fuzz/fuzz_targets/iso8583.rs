//! The native ISO 8583 codec on arbitrary bytes, read two ways: as a frame (decode must not panic, and a
//! frame it accepts must be canonical: it encodes back to exactly its own bytes, which is the Rust half of
//! the pyiso8583 agreement in tests/test_iso8583_native.py) and as a recipe for a message (encode must not
//! panic; what it encodes decodes to the same values). The table is fuzz/iso8583_dialect.txt, generated
//! from acquirer/spec.py (a Python test keeps the two equal).
//! Run: cd fuzz && cargo +nightly fuzz run iso8583 corpus/iso8583 -- -max_total_time=60
#![no_main]

use std::sync::OnceLock;

use cloudlayer_native::iso8583::{Data, Dialect, Encoding, FieldSpec, Input, Message};
use libfuzzer_sys::fuzz_target;

const TABLE: &str = include_str!("../iso8583_dialect.txt");

fn table() -> &'static (Dialect, Vec<(usize, FieldSpec)>) {
    static TABLE_CELL: OnceLock<(Dialect, Vec<(usize, FieldSpec)>)> = OnceLock::new();
    TABLE_CELL.get_or_init(|| {
        let fields: Vec<(usize, FieldSpec)> = TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                let encoding = match c[1] {
                    "ascii" => Encoding::Ascii,
                    "b" => Encoding::Binary,
                    other => panic!("unknown encoding {other}"),
                };
                let spec = FieldSpec {
                    encoding,
                    len_digits: c[2].parse().expect("len digits"),
                    max_len: c[3].parse().expect("max len"),
                };
                (c[0].parse().expect("field"), spec)
            })
            .collect();
        (Dialect::new(fields.clone()).expect("table"), fields)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The values a decoded message would be given back to the encoder as (binary fields as hex).
fn values(msg: &Message<'_>) -> Vec<Option<String>> {
    let mut v = vec![None; 129];
    for (n, data) in &msg.fields {
        v[*n] = Some(match data {
            Data::Text(s) => (*s).to_string(),
            Data::Binary(b) => hex(b),
        });
    }
    v
}

fn encode(d: &Dialect, mti: &str, v: &[Option<String>]) -> Result<Vec<u8>, String> {
    let inputs: Vec<Option<Input<'_>>> = v.iter().map(|s| s.as_deref().map(Input::Text)).collect();
    d.encode(Some(Input::Text(mti)), &inputs)
        .map_err(|e| e.to_string())
}

/// Bytes to a message: MTI, then (field selector, length, content) items with lengths near the bounds.
fn recipe(data: &[u8], fields: &[(usize, FieldSpec)]) -> (String, Vec<Option<String>>) {
    let mut it = data.iter().copied();
    let flags = it.next().unwrap_or(0);
    let raw: Vec<u8> = it.by_ref().take(4).collect();
    let mti = if flags & 1 == 0 {
        raw.iter().map(|b| char::from(b'0' + b % 10)).collect()
    } else {
        String::from_utf8_lossy(&raw).into_owned()
    };
    let mut v = vec![None; 129];
    while let (Some(sel), Some(len)) = (it.next(), it.next()) {
        let (n, spec) = match fields.get(usize::from(sel) % (fields.len() + 4)) {
            Some(f) => *f,
            None => (2 + usize::from(sel) % 127, fields[0].1),
        };
        let want = match len {
            255 => spec.max_len,
            254 => spec.max_len + 1,
            253 => spec.max_len.saturating_sub(1),
            l => usize::from(l),
        };
        let content: Vec<u8> = it.by_ref().take(want.min(64)).collect();
        let byte = |i: usize| {
            content
                .get(i % content.len().max(1))
                .copied()
                .unwrap_or(b'0')
        };
        let value = match (spec.encoding, flags & 6) {
            (_, 6) => String::from_utf8_lossy(&content).into_owned(),
            (Encoding::Ascii, _) => (0..want).map(|i| char::from(byte(i) & 0x7F)).collect(),
            (Encoding::Binary, 2) => (0..want).map(|i| format!("{:02x}", byte(i))).collect(),
            (Encoding::Binary, _) => (0..want).map(|i| format!("{:02X}", byte(i))).collect(),
        };
        if let Some(slot) = v.get_mut(n) {
            *slot = Some(value);
        }
    }
    (mti, v)
}

fuzz_target!(|data: &[u8]| {
    let (d, fields) = table();
    if let Ok(msg) = d.decode(data) {
        let again = encode(d, msg.mti, &values(&msg)).expect("a decoded frame re-encodes");
        assert_eq!(again, data, "accepted a frame that is not canonical");
    }
    let (mti, v) = recipe(data, fields);
    // Slots outside the table are the Python layer's to refuse (by key); leave them out here.
    let v: Vec<Option<String>> = v
        .into_iter()
        .enumerate()
        .map(|(n, s)| s.filter(|_| d.field(n).is_some()))
        .collect();
    if let Ok(frame) = encode(d, &mti, &v) {
        match d.decode(&frame) {
            Ok(msg) => {
                assert_eq!(msg.mti, mti);
                let back = values(&msg);
                for (n, (a, b)) in v.iter().zip(&back).enumerate() {
                    let same = match (a, b) {
                        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                        (None, None) => true,
                        _ => false,
                    };
                    assert!(same, "field {n} did not round-trip");
                }
            }
            Err(e) => assert!(
                !mti.bytes().all(|c| c.is_ascii_digit()),
                "an encoded message with a numeric MTI failed to decode: {e}"
            ),
        }
    }
});
