//! ISO 8583:1987 pack/unpack for one table-driven dialect (docs/iso8583.md), without Python.
//!
//! The table is not written here: `py_iso8583` builds a [`Dialect`] from the pyiso8583 spec dict in
//! `acquirer/spec.py`, so the dialect has one source of truth. Only what that dialect uses is supported
//! (ASCII MTI, binary primary and secondary bitmaps, fields 2-128 as ASCII text or raw bytes, fixed or
//! with an ASCII decimal length prefix of 1-3 digits counting bytes); a table asking for more is refused
//! when the dialect is built, not misread later.
//!
//! pyiso8583 is the oracle (tests/test_iso8583_native.py). Encoding mirrors it exactly, error text
//! included (`EncodeError`'s `Display` is pyiso8583's message). Decoding accepts exactly the frames
//! pyiso8583 decodes *and* would encode back to the same bytes: the oracle also takes a length prefix
//! such as `+5` or ` 5` (Python's `int()`), a secondary bitmap with no field in it, and a tertiary bitmap
//! behind bit 65; none of these is our dialect, and a peer that sends one is refused, not guessed at.

use std::fmt;

/// Field numbers run 1-128; index 0 is unused and 1 is the secondary bitmap.
const SLOTS: usize = 129;
const MTI_LEN: usize = 4;
const BITMAP_LEN: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// ASCII text (pyiso8583 `data_enc = "ascii"`): every byte below 0x80.
    Ascii,
    /// Raw bytes (pyiso8583 `data_enc = "b"`), upper-case hex on the Python side.
    Binary,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    pub encoding: Encoding,
    /// 0 = fixed length (`max_len` bytes exactly), else the number of ASCII length digits (LL = 2).
    pub len_digits: u8,
    pub max_len: usize,
}

#[derive(Clone, Debug)]
pub struct Dialect {
    fields: [Option<FieldSpec>; SLOTS],
}

impl Dialect {
    /// Builds the table. Refuses field numbers outside 2-128 (1 is the secondary bitmap), field 65 (it
    /// would announce a tertiary bitmap), length prefixes of more than 3 digits and maxima the prefix
    /// cannot express.
    pub fn new(fields: impl IntoIterator<Item = (usize, FieldSpec)>) -> Result<Self, String> {
        let mut table = [None; SLOTS];
        for (number, spec) in fields {
            if !(2..SLOTS).contains(&number) || number == 65 {
                return Err(format!("field {number} cannot be in this dialect"));
            }
            if spec.len_digits > 3 {
                return Err(format!("field {number}: at most 3 length digits"));
            }
            if spec.len_digits > 0 && spec.max_len >= 10usize.pow(u32::from(spec.len_digits)) {
                return Err(format!(
                    "field {number}: max_len does not fit its length prefix"
                ));
            }
            if let Some(slot) = table.get_mut(number) {
                *slot = Some(spec);
            }
        }
        Ok(Dialect { fields: table })
    }

    pub fn field(&self, number: usize) -> Option<FieldSpec> {
        self.fields.get(number).copied().flatten()
    }
}

/// The field a problem is in: the MTI (`t`), a bitmap (`p`, `1`) or a data field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Mti,
    Primary,
    Secondary,
    Data(usize),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Mti => f.write_str("t"),
            Field::Primary => f.write_str("p"),
            Field::Secondary => f.write_str("1"),
            Field::Data(n) => write!(f, "{n}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Encoding

/// A value handed to the encoder. `Unencodable` is a string that has no UTF-8 form (a lone surrogate
/// from Python): no text field can carry it and it is not hex; `chars` is its length in code points.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Text(&'a str),
    Unencodable { chars: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeReason {
    Missing,
    InvalidText,
    OddHex,
    NonHex,
    Fixed { got: usize, want: usize },
    TooLong { got: usize, max: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeError {
    pub field: Field,
    pub reason: EncodeReason,
}

impl fmt::Display for EncodeError {
    /// pyiso8583's own wording (its `EncodeError.msg`), so that the error a caller sees does not change
    /// with the codec. Never the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            EncodeReason::Missing => f.write_str("Field data is required"),
            EncodeReason::InvalidText => f.write_str("Failed to encode field, invalid data"),
            EncodeReason::OddHex => f.write_str("Failed to encode field, odd-length hex data"),
            EncodeReason::NonHex => f.write_str("Failed to encode field, non-hex data"),
            EncodeReason::Fixed { got, want } => {
                write!(f, "Field data is {got} bytes, expecting {want}")
            }
            EncodeReason::TooLong { got, max } => {
                write!(f, "Field data is {got} bytes, larger than maximum {max}")
            }
        }
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Appends the encoded data of one field and returns its length in bytes; errors as pyiso8583 orders
/// them (the text or hex first, the length after).
fn push_data(out: &mut Vec<u8>, enc: Encoding, value: Input<'_>) -> Result<usize, EncodeReason> {
    match (enc, value) {
        (Encoding::Ascii, Input::Text(s)) if s.is_ascii() => {
            out.extend_from_slice(s.as_bytes());
            Ok(s.len())
        }
        (Encoding::Ascii, _) => Err(EncodeReason::InvalidText),
        (Encoding::Binary, Input::Text(s)) => {
            // Python's binascii.a2b_hex: the odd length is reported whatever the characters are.
            if s.chars().count() % 2 == 1 {
                return Err(EncodeReason::OddHex);
            }
            let start = out.len();
            let pairs = s.as_bytes().chunks_exact(2);
            if !pairs.remainder().is_empty() {
                return Err(EncodeReason::NonHex);
            }
            for pair in pairs {
                let (Some(hi), Some(lo)) = (
                    pair.first().copied().and_then(hex_value),
                    pair.get(1).copied().and_then(hex_value),
                ) else {
                    out.truncate(start);
                    return Err(EncodeReason::NonHex);
                };
                out.push(hi << 4 | lo);
            }
            Ok(out.len() - start)
        }
        (Encoding::Binary, Input::Unencodable { chars }) => Err(if chars % 2 == 1 {
            EncodeReason::OddHex
        } else {
            EncodeReason::NonHex
        }),
    }
}

/// Writes `n` in ASCII decimal over `slot`, zero padded (the table guarantees it fits).
fn put_length(slot: &mut [u8], mut n: usize) {
    for d in slot.iter_mut().rev() {
        // A digit is below 10, so the cast cannot truncate.
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

impl Dialect {
    /// Packs a message: `mti` the `t` value (None if absent), `fields[n]` field n's value. A value in a
    /// slot the table does not define is refused by the caller, which knows the key it came from.
    pub fn encode(
        &self,
        mti: Option<Input<'_>>,
        fields: &[Option<Input<'_>>],
    ) -> Result<Vec<u8>, EncodeError> {
        let fail = |field, reason| EncodeError { field, reason };
        let mti = mti.ok_or(fail(Field::Mti, EncodeReason::Missing))?;
        let mut out = Vec::with_capacity(256);
        let n = push_data(&mut out, Encoding::Ascii, mti).map_err(|r| fail(Field::Mti, r))?;
        if n != MTI_LEN {
            return Err(fail(
                Field::Mti,
                EncodeReason::Fixed {
                    got: n,
                    want: MTI_LEN,
                },
            ));
        }
        let mut bitmap = [0u8; 2 * BITMAP_LEN];
        let mut secondary = false;
        for (number, value) in fields.iter().enumerate().take(SLOTS).skip(2) {
            if value.is_some() {
                secondary |= number > 64;
                if let Some(byte) = bitmap.get_mut((number - 1) / 8) {
                    *byte |= 0x80 >> ((number - 1) % 8);
                }
            }
        }
        if let (true, Some(first)) = (secondary, bitmap.first_mut()) {
            *first |= 0x80;
        }
        let width = if secondary { 2 } else { 1 } * BITMAP_LEN;
        out.extend_from_slice(bitmap.get(..width).unwrap_or(&bitmap));
        for (number, value) in fields.iter().enumerate().take(SLOTS).skip(2) {
            let Some(value) = *value else { continue };
            let field = Field::Data(number);
            let Some(spec) = self.field(number) else {
                // The caller maps keys to defined fields only; refuse rather than guess if it did not.
                return Err(fail(field, EncodeReason::Missing));
            };
            let digits = usize::from(spec.len_digits);
            let at = out.len();
            out.resize(at + digits, b'0');
            let n = push_data(&mut out, spec.encoding, value).map_err(|r| fail(field, r))?;
            if digits == 0 && n != spec.max_len {
                let reason = EncodeReason::Fixed {
                    got: n,
                    want: spec.max_len,
                };
                return Err(fail(field, reason));
            }
            if n > spec.max_len {
                let reason = EncodeReason::TooLong {
                    got: n,
                    max: spec.max_len,
                };
                return Err(fail(field, reason));
            }
            if let Some(slot) = out.get_mut(at..at + digits) {
                put_length(slot, n);
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------------
// Decoding

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeReason {
    Truncated,
    MtiNotDigits,
    EmptySecondaryBitmap,
    UndefinedField,
    LengthNotDigits,
    TooLong,
    NotAscii,
    TrailingBytes,
}

impl DecodeReason {
    /// A stable code for logs and tests.
    pub fn code(self) -> &'static str {
        match self {
            DecodeReason::Truncated => "truncated",
            DecodeReason::MtiNotDigits => "mti-not-digits",
            DecodeReason::EmptySecondaryBitmap => "empty-secondary-bitmap",
            DecodeReason::UndefinedField => "undefined-field",
            DecodeReason::LengthNotDigits => "length-not-digits",
            DecodeReason::TooLong => "too-long",
            DecodeReason::NotAscii => "not-ascii",
            DecodeReason::TrailingBytes => "trailing-bytes",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub field: Field,
    pub offset: usize,
    pub reason: DecodeReason,
}

impl fmt::Display for DecodeError {
    /// Where and what, never the bytes (the frame may hold a PAN).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field;
        let offset = self.offset;
        write!(f, "{}: field {field} at byte {offset}", self.reason.code())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub mti: &'a str,
    /// (field number, data) in ascending field order.
    pub fields: Vec<(usize, Data<'a>)>,
}

struct Cursor<'a> {
    frame: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: Field) -> Result<&'a [u8], DecodeError> {
        let out = self
            .frame
            .get(self.at..self.at.saturating_add(n))
            .ok_or(DecodeError {
                field,
                offset: self.at,
                reason: DecodeReason::Truncated,
            })?;
        self.at += n;
        Ok(out)
    }

    fn error(&self, field: Field, reason: DecodeReason) -> DecodeError {
        DecodeError {
            field,
            offset: self.at,
            reason,
        }
    }
}

fn bit(bitmap: &[u8], number: usize) -> bool {
    bitmap
        .get((number - 1) / 8)
        .is_some_and(|b| b & (0x80 >> ((number - 1) % 8)) != 0)
}

fn as_ascii(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

impl Dialect {
    /// Unpacks one message (the payload, without its length prefix).
    pub fn decode<'a>(&self, frame: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let mut cur = Cursor { frame, at: 0 };
        let mti_bytes = cur.take(MTI_LEN, Field::Mti)?;
        let mti = as_ascii(mti_bytes)
            .filter(|m| m.bytes().all(|c| c.is_ascii_digit()))
            .ok_or(DecodeError {
                field: Field::Mti,
                offset: 0,
                reason: DecodeReason::MtiNotDigits,
            })?;
        let primary = cur.take(BITMAP_LEN, Field::Primary)?;
        let mut bitmap = [0u8; 2 * BITMAP_LEN];
        let (first, second) = bitmap.split_at_mut(BITMAP_LEN);
        first.copy_from_slice(primary);
        let mut last = 64;
        if bit(primary, 1) {
            let at = cur.at;
            let secondary = cur.take(BITMAP_LEN, Field::Secondary)?;
            if secondary.iter().all(|b| *b == 0) {
                let reason = DecodeReason::EmptySecondaryBitmap;
                return Err(DecodeError {
                    field: Field::Secondary,
                    offset: at,
                    reason,
                });
            }
            second.copy_from_slice(secondary);
            last = 128;
        }
        let mut fields = Vec::with_capacity(24);
        for number in 2..=last {
            if !bit(&bitmap, number) {
                continue;
            }
            let field = Field::Data(number);
            let spec = self
                .field(number)
                .ok_or(cur.error(field, DecodeReason::UndefinedField))?;
            let len = if spec.len_digits == 0 {
                spec.max_len
            } else {
                let at = cur.at;
                let digits = cur.take(usize::from(spec.len_digits), field)?;
                if !digits.iter().all(u8::is_ascii_digit) {
                    let reason = DecodeReason::LengthNotDigits;
                    return Err(DecodeError {
                        field,
                        offset: at,
                        reason,
                    });
                }
                let n = digits.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0'));
                if n > spec.max_len {
                    return Err(DecodeError {
                        field,
                        offset: at,
                        reason: DecodeReason::TooLong,
                    });
                }
                n
            };
            let at = cur.at;
            let bytes = cur.take(len, field)?;
            let data = match spec.encoding {
                Encoding::Binary => Data::Binary(bytes),
                Encoding::Ascii => Data::Text(as_ascii(bytes).ok_or(DecodeError {
                    field,
                    offset: at,
                    reason: DecodeReason::NotAscii,
                })?),
            };
            fields.push((number, data));
        }
        if cur.at != frame.len() {
            let field = fields
                .last()
                .map_or(Field::Primary, |(n, _)| Field::Data(*n));
            return Err(cur.error(field, DecodeReason::TrailingBytes));
        }
        Ok(Message { mti, fields })
    }
}

#[cfg(test)]
#[path = "iso8583_tests.rs"]
mod tests;
