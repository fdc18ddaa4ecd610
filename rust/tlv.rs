//! EMV BER-TLV reading and writing (EMV 4.x Book 3, Annex B), with no Python types so it can be
//! unit-tested and fuzzed on its own.
//!
//! Rules we apply (and why):
//! - Tags are 1..=4 bytes. A first byte whose low five bits are all set announces more bytes; each
//!   subsequent byte with bit 8 set announces another. Kernel and vendor tags reach 3 bytes (DF8129,
//!   FF8105); anything longer than 4 is rejected rather than guessed at.
//! - Lengths: short form `00..7F`, long form `81 xx` and `82 xx xx` (EMV caps values at 65535). `80`
//!   (indefinite) and `83`+ are rejected. Non-minimal long forms (`81 05`) are accepted on read and
//!   never written.
//! - `00` bytes before, between and after objects are padding and skipped. `FF` is NOT padding here:
//!   field 55 really carries FFxx tags.
//! - A constructed object's children are read from its value only, so a child can never run past
//!   its parent; nesting is bounded by [`MAX_DEPTH`].

use std::fmt;

/// Most templates nested inside each other (a top-level template is level 1). Real EMV data nests
/// 2-3 deep (77 > 71 > 86); the bound keeps recursion depth and cost fixed.
pub const MAX_DEPTH: usize = 10;

/// Largest value a 3-byte (`82 xx xx`) length can express; what we will write.
pub const MAX_VALUE_LEN: usize = 0xFFFF;

/// Why the data is not valid BER-TLV. Never carries any byte of the data itself (it may be card data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    TruncatedTag,
    TagTooLong,
    TruncatedLength,
    IndefiniteLength,
    OverlongLength,
    ValueOverrun,
    TooDeep,
    OddHex,
    NonHex,
    /// A card data field (5A, 57, 5F24, 5F34) whose value is not the BCD it must be.
    BadCardData,
}

impl Reason {
    /// Stable machine-readable code (exposed to Python as `TLVError.reason`).
    pub fn code(self) -> &'static str {
        match self {
            Reason::TruncatedTag => "truncated_tag",
            Reason::TagTooLong => "tag_too_long",
            Reason::TruncatedLength => "truncated_length",
            Reason::IndefiniteLength => "indefinite_length",
            Reason::OverlongLength => "overlong_length",
            Reason::ValueOverrun => "value_overrun",
            Reason::TooDeep => "too_deep",
            Reason::OddHex => "odd_hex",
            Reason::NonHex => "non_hex",
            Reason::BadCardData => "bad_card_data",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Reason::TruncatedTag => "truncated tag",
            Reason::TagTooLong => "tag longer than 4 bytes",
            Reason::TruncatedLength => "truncated length",
            Reason::IndefiniteLength => "indefinite length (0x80) is not allowed",
            Reason::OverlongLength => {
                "length field longer than 3 bytes (only 81 and 82 long forms)"
            }
            Reason::ValueOverrun => "value runs past the end of its data or parent",
            Reason::TooDeep => "constructed objects nested too deep",
            Reason::OddHex => "hex string has an odd number of digits",
            Reason::NonHex => "non-hex character in hex string",
            Reason::BadCardData => "card data field is not well-formed BCD",
        }
    }
}

/// A decoding failure at an absolute byte offset (for hex input errors: the offset in the string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlvError {
    pub offset: usize,
    pub reason: Reason,
}

impl fmt::Display for TlvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {}", self.reason.describe(), self.offset)
    }
}

impl std::error::Error for TlvError {}

/// A tag as its bytes packed big-endian into a u32 (`9F26` -> 0x9F26). Unique because a tag's
/// first byte is never 00.
pub type Tag = u32;

/// True when bit 6 of the tag's first byte is set (a template holding more TLV objects).
pub fn is_constructed(tag: Tag) -> bool {
    first_byte(tag) & 0x20 != 0
}

fn first_byte(tag: Tag) -> u8 {
    let bytes = tag.to_be_bytes();
    // The first non-zero byte is the tag's first byte.
    bytes.into_iter().find(|b| *b != 0).unwrap_or(0)
}

/// Number of bytes in a packed tag.
pub fn tag_len(tag: Tag) -> usize {
    match tag {
        0..=0xFF => 1,
        0x100..=0xFFFF => 2,
        0x1_0000..=0xFF_FFFF => 3,
        _ => 4,
    }
}

/// One object read at some level: its packed tag, the byte range it covers and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: Tag,
    pub constructed: bool,
    pub value: &'a [u8],
    /// The whole object, tag and length included.
    pub raw: &'a [u8],
    /// Absolute offset of the object's first tag byte.
    pub offset: usize,
    /// Absolute offset of the first value byte.
    pub value_offset: usize,
}

/// Reads the objects of one level in order, skipping `00` padding. Children of a constructed object
/// are read with `Reader::new(tlv.value, tlv.value_offset)`.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
    failed: bool,
}

impl<'a> Reader<'a> {
    /// `base` is the absolute offset of `data[0]`, so errors report offsets in the caller's input.
    pub fn new(data: &'a [u8], base: usize) -> Self {
        Reader {
            data,
            pos: 0,
            base,
            failed: false,
        }
    }

    fn err(&mut self, at: usize, reason: Reason) -> TlvError {
        self.failed = true;
        TlvError {
            offset: self.base + at,
            reason,
        }
    }

    fn read_one(&mut self) -> Result<Tlv<'a>, TlvError> {
        let start = self.pos;
        let data = self.data;
        let Some(&b0) = data.get(start) else {
            return Err(self.err(start, Reason::TruncatedTag));
        };
        let mut tag: Tag = Tag::from(b0);
        let mut p = start + 1;
        if b0 & 0x1F == 0x1F {
            loop {
                let Some(&b) = data.get(p) else {
                    return Err(self.err(p, Reason::TruncatedTag));
                };
                if p - start >= 4 {
                    return Err(self.err(start, Reason::TagTooLong));
                }
                tag = (tag << 8) | Tag::from(b);
                p += 1;
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        let Some(&l0) = data.get(p) else {
            return Err(self.err(p, Reason::TruncatedLength));
        };
        let len_at = p;
        p += 1;
        let len = match l0 {
            0x00..=0x7F => usize::from(l0),
            0x80 => return Err(self.err(len_at, Reason::IndefiniteLength)),
            0x81 => {
                let Some(&l1) = data.get(p) else {
                    return Err(self.err(len_at, Reason::TruncatedLength));
                };
                p += 1;
                usize::from(l1)
            }
            0x82 => {
                let (Some(&l1), Some(&l2)) = (data.get(p), data.get(p + 1)) else {
                    return Err(self.err(len_at, Reason::TruncatedLength));
                };
                p += 2;
                (usize::from(l1) << 8) | usize::from(l2)
            }
            _ => return Err(self.err(len_at, Reason::OverlongLength)),
        };
        let value_start = p;
        let Some(value) = data.get(value_start..value_start + len) else {
            return Err(self.err(start, Reason::ValueOverrun));
        };
        self.pos = value_start + len;
        Ok(Tlv {
            tag,
            constructed: b0 & 0x20 != 0,
            value,
            raw: data.get(start..self.pos).unwrap_or_default(),
            offset: self.base + start,
            value_offset: self.base + value_start,
        })
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Tlv<'a>, TlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        while self.data.get(self.pos) == Some(&0x00) {
            self.pos += 1;
        }
        if self.pos >= self.data.len() {
            return None;
        }
        Some(self.read_one())
    }
}

/// Checks a whole buffer, recursing into templates: `Ok(())` exactly when `decode` would succeed.
pub fn validate(data: &[u8]) -> Result<(), TlvError> {
    fn level(data: &[u8], base: usize, depth: usize) -> Result<(), TlvError> {
        for item in Reader::new(data, base) {
            let tlv = item?;
            if tlv.constructed {
                if depth > MAX_DEPTH {
                    return Err(TlvError {
                        offset: tlv.offset,
                        reason: Reason::TooDeep,
                    });
                }
                level(tlv.value, tlv.value_offset, depth + 1)?;
            }
        }
        Ok(())
    }
    level(data, 0, 1)
}

/// A parsed object with its children (for constructed objects), borrowing the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node<'a> {
    pub tlv: Tlv<'a>,
    pub children: Vec<Node<'a>>,
}

/// Parses a whole buffer into a tree, with the same rules and errors as [`validate`].
pub fn parse(data: &[u8]) -> Result<Vec<Node<'_>>, TlvError> {
    fn level<'a>(data: &'a [u8], base: usize, depth: usize) -> Result<Vec<Node<'a>>, TlvError> {
        let mut out = Vec::new();
        for item in Reader::new(data, base) {
            let tlv = item?;
            let children = if tlv.constructed {
                if depth > MAX_DEPTH {
                    return Err(TlvError {
                        offset: tlv.offset,
                        reason: Reason::TooDeep,
                    });
                }
                level(tlv.value, tlv.value_offset, depth + 1)?
            } else {
                Vec::new()
            };
            out.push(Node { tlv, children });
        }
        Ok(out)
    }
    level(data, 0, 1)
}

/// Appends a tag's bytes.
pub fn write_tag(out: &mut Vec<u8>, tag: Tag) {
    let bytes = tag.to_be_bytes();
    let n = tag_len(tag);
    out.extend_from_slice(bytes.get(4 - n..).unwrap_or_default());
}

/// Appends the minimal length encoding. Callers ensure `len <= MAX_VALUE_LEN`.
pub fn write_len(out: &mut Vec<u8>, len: usize) {
    let [_, _, hi, lo] = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    if len < 0x80 {
        out.push(lo);
    } else if len <= 0xFF {
        out.extend_from_slice(&[0x81, lo]);
    } else {
        out.extend_from_slice(&[0x82, hi, lo]);
    }
}

/// Appends tag, minimal length and value. `Err(())` when the value is too long for 3 length bytes.
pub fn write_tlv(out: &mut Vec<u8>, tag: Tag, value: &[u8]) -> Result<(), ValueTooLong> {
    if value.len() > MAX_VALUE_LEN {
        return Err(ValueTooLong);
    }
    write_tag(out, tag);
    write_len(out, value.len());
    out.extend_from_slice(value);
    Ok(())
}

/// A value longer than 65535 bytes cannot be written with EMV's lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueTooLong;

/// Parses a tag written as hex (`"9f26"`, `"DF8129"`) and checks it is one well-formed tag.
pub fn parse_tag_hex(s: &str) -> Option<Tag> {
    let bytes = decode_hex(s).ok()?;
    let (&b0, rest) = bytes.split_first()?;
    if b0 == 0 || rest.len() > 3 {
        return None;
    }
    let multi = b0 & 0x1F == 0x1F;
    if multi == rest.is_empty() {
        return None;
    }
    if let Some((last, middle)) = rest.split_last() {
        if last & 0x80 != 0 || middle.iter().any(|b| b & 0x80 == 0) {
            return None;
        }
    }
    Some(bytes.iter().fold(0, |acc, b| (acc << 8) | Tag::from(*b)))
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Upper-case hex of a packed tag (`0x9F26` -> `"9F26"`).
pub fn tag_hex(tag: Tag) -> String {
    let mut out = Vec::with_capacity(8);
    write_tag(&mut out, tag);
    hex_upper(&out)
}

pub fn hex_upper(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for n in [b >> 4, b & 0x0F] {
            s.push(char::from(
                HEX_UPPER.get(usize::from(n)).copied().unwrap_or(b'?'),
            ));
        }
    }
    s
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes a hex string (either case). Errors carry the offset in the string.
pub fn decode_hex(s: &str) -> Result<Vec<u8>, TlvError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 2);
    let mut pairs = bytes.chunks_exact(2);
    for (i, pair) in pairs.by_ref().enumerate() {
        let (Some(hi), Some(lo)) = (pair.first(), pair.get(1)) else {
            break;
        };
        let h = nibble(*hi).ok_or(TlvError {
            offset: 2 * i,
            reason: Reason::NonHex,
        })?;
        let l = nibble(*lo).ok_or(TlvError {
            offset: 2 * i + 1,
            reason: Reason::NonHex,
        })?;
        out.push((h << 4) | l);
    }
    if let [last] = pairs.remainder() {
        let reason = if nibble(*last).is_some() {
            Reason::OddHex
        } else {
            Reason::NonHex
        };
        return Err(TlvError {
            offset: bytes.len() - 1,
            reason,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        decode_hex(s).expect("test hex")
    }

    fn err(s: &str) -> TlvError {
        validate(&h(s)).expect_err("should fail")
    }

    #[test]
    fn reads_primitive_and_multibyte_tags() {
        let data = h("9F02060000000010009A03261126DF812901FF");
        let items: Vec<_> = Reader::new(&data, 0).map(|r| r.expect("ok")).collect();
        let tags: Vec<_> = items.iter().map(|t| t.tag).collect();
        assert_eq!(tags, vec![0x9F02, 0x9A, 0xDF8129]);
        assert_eq!(items[0].value, h("000000001000").as_slice());
        assert_eq!(items[2].value_offset, data.len() - 1);
    }

    #[test]
    fn skips_padding_but_not_ff() {
        let data = h("00009A0126000000FF81050100");
        let tree = parse(&data).expect("ok");
        assert_eq!(tree.len(), 2);
        assert_eq!(tree[1].tlv.tag, 0xFF8105);
        assert!(tree[1].tlv.constructed);
        assert!(tree[1].children.is_empty());
    }

    #[test]
    fn long_form_lengths_including_non_minimal() {
        let mut data = h("5A8105");
        data.extend_from_slice(&[1, 2, 3, 4, 5]);
        let t = parse(&data).expect("ok");
        assert_eq!(t[0].tlv.value.len(), 5);
        let mut data = h("DF01820100");
        data.extend(std::iter::repeat_n(7u8, 256));
        assert_eq!(parse(&data).expect("ok")[0].tlv.value.len(), 256);
    }

    #[test]
    fn every_error_reason_with_offset() {
        assert_eq!(
            err("9F"),
            TlvError {
                offset: 1,
                reason: Reason::TruncatedTag
            }
        );
        assert_eq!(
            err("9F8181818101"),
            TlvError {
                offset: 0,
                reason: Reason::TagTooLong
            }
        );
        assert_eq!(
            err("9A"),
            TlvError {
                offset: 1,
                reason: Reason::TruncatedLength
            }
        );
        assert_eq!(
            err("9A81"),
            TlvError {
                offset: 1,
                reason: Reason::TruncatedLength
            }
        );
        assert_eq!(
            err("9A8201"),
            TlvError {
                offset: 1,
                reason: Reason::TruncatedLength
            }
        );
        assert_eq!(
            err("9A80"),
            TlvError {
                offset: 1,
                reason: Reason::IndefiniteLength
            }
        );
        assert_eq!(
            err("9A830000"),
            TlvError {
                offset: 1,
                reason: Reason::OverlongLength
            }
        );
        assert_eq!(
            err("9A0201"),
            TlvError {
                offset: 0,
                reason: Reason::ValueOverrun
            }
        );
        // child past parent: 70 holds 3 bytes but its child claims 2 value bytes after a 2-byte header
        assert_eq!(
            err("70039A02260000"),
            TlvError {
                offset: 2,
                reason: Reason::ValueOverrun
            }
        );
    }

    #[test]
    fn nesting_bound() {
        // Build nested: each 70 wraps the rest.
        fn nest(levels: usize) -> Vec<u8> {
            let mut v = Vec::new();
            for _ in 0..levels {
                let mut outer = vec![0x70];
                write_len(&mut outer, v.len());
                outer.extend_from_slice(&v);
                v = outer;
            }
            v
        }
        assert!(validate(&nest(MAX_DEPTH)).is_ok());
        let e = validate(&nest(MAX_DEPTH + 1)).expect_err("too deep");
        assert_eq!(e.reason, Reason::TooDeep);
        assert_eq!(e.offset, 2 * MAX_DEPTH);
    }

    #[test]
    fn hex_errors() {
        assert_eq!(
            decode_hex("9a0").expect_err("odd"),
            TlvError {
                offset: 2,
                reason: Reason::OddHex
            }
        );
        assert_eq!(
            decode_hex("9x01").expect_err("bad"),
            TlvError {
                offset: 1,
                reason: Reason::NonHex
            }
        );
        assert_eq!(
            decode_hex("9a0g").expect_err("bad"),
            TlvError {
                offset: 3,
                reason: Reason::NonHex
            }
        );
        assert_eq!(decode_hex("9a01é").expect_err("bad").reason, Reason::NonHex);
        assert_eq!(decode_hex("").expect("empty"), Vec::<u8>::new());
    }

    #[test]
    fn tag_hex_round_trip_and_validation() {
        for t in ["9F26", "5A", "DF8129", "FF8105", "BF0C", "9F818101"] {
            let tag = parse_tag_hex(t).expect("valid");
            assert_eq!(tag_hex(tag), t);
        }
        assert_eq!(parse_tag_hex("9f26"), Some(0x9F26));
        for bad in [
            "",
            "00",
            "9F",
            "5A01",
            "9F81",
            "DF818181",
            "DF81818101",
            "zz",
            "9F2",
        ] {
            assert_eq!(parse_tag_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn minimal_lengths() {
        let mut out = Vec::new();
        write_len(&mut out, 0x7F);
        write_len(&mut out, 0x80);
        write_len(&mut out, 0x100);
        assert_eq!(out, h("7F8180820100"));
        assert_eq!(
            write_tlv(&mut out, 0x9A, &vec![0; MAX_VALUE_LEN + 1]),
            Err(ValueTooLong)
        );
    }
}
