//! The Python face of the ISO 8583 codec: `Iso8583Dialect(SPEC)` reads the pyiso8583 spec dict of
//! `acquirer/spec.py` into a [`Dialect`], and its `encode` / `decode` convert between field dicts and
//! the pure-Rust codec. The rules live in `iso8583`.

use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString};

use crate::iso8583::{Data, DecodeError, Dialect, EncodeError, Encoding, Field, FieldSpec, Input};

pyo3::create_exception!(
    cloudlayer.acquirer.codec,
    Iso8583EncodeError,
    PyValueError,
    "A value the dialect cannot carry. `field` is the ISO 8583 field ('t' for the MTI) and `reason` \
     pyiso8583's wording of the problem; neither ever holds the value."
);

pyo3::create_exception!(
    cloudlayer.acquirer.codec,
    Iso8583DecodeError,
    PyValueError,
    "A payload that is not a message of the dialect. `field`, `offset` (bytes into the payload) and \
     `reason` (a stable code) say where and what; nothing of the payload's content is in it."
);

const SLOTS: usize = 129;

#[pyclass(frozen, module = "cloudlayer._native", name = "Iso8583Dialect")]
pub struct PyDialect {
    dialect: Dialect,
    /// Interned field-number keys ("2" .. "128"), so a decoded dict allocates no key strings.
    keys: Vec<Py<PyString>>,
    mti_key: Py<PyString>,
}

/// "2" .. "128" written the one way pyiso8583 writes them (no sign, no leading zero).
fn field_number(key: &str) -> Option<usize> {
    if key.is_empty() || key.len() > 3 || key.starts_with('0') {
        return None;
    }
    if !key.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    key.parse().ok().filter(|n| (1..SLOTS).contains(n))
}

fn shown(key: &str) -> String {
    key.chars().take(8).collect()
}

fn spec_error(key: &str, what: &str) -> PyErr {
    PyValueError::new_err(format!("ISO 8583 spec, field {}: {what}", shown(key)))
}

fn item<'py>(entry: &Bound<'py, PyAny>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    match entry.get_item(name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_instance_of::<PyKeyError>(entry.py()) => Ok(None),
        Err(e) => Err(e),
    }
}

fn text(entry: &Bound<'_, PyAny>, key: &str, name: &str) -> PyResult<Option<String>> {
    item(entry, name)?
        .map(|v| v.extract::<String>())
        .transpose()
        .map_err(|_| spec_error(key, &format!("{name} must be a str")))
}

fn number(entry: &Bound<'_, PyAny>, key: &str, name: &str) -> PyResult<usize> {
    item(entry, name)?
        .ok_or_else(|| spec_error(key, &format!("{name} is required")))?
        .extract::<usize>()
        .map_err(|_| spec_error(key, &format!("{name} must be a non-negative int")))
}

/// One pyiso8583 field spec, limited to what this codec implements.
fn field_spec(key: &str, entry: &Bound<'_, PyAny>) -> PyResult<FieldSpec> {
    let data_enc = text(entry, key, "data_enc")?.unwrap_or_default();
    let encoding = match data_enc.as_str() {
        "ascii" => Encoding::Ascii,
        "b" => Encoding::Binary,
        _ => return Err(spec_error(key, "data_enc must be 'ascii' or 'b'")),
    };
    let len_type = u8::try_from(number(entry, key, "len_type")?)
        .map_err(|_| spec_error(key, "len_type is out of range"))?;
    let max_len = number(entry, key, "max_len")?;
    let len_enc = text(entry, key, "len_enc")?;
    if len_type > 0 && len_enc.as_deref() != Some("ascii") {
        return Err(spec_error(
            key,
            "only ASCII length prefixes are implemented",
        ));
    }
    let len_count = text(entry, key, "len_count")?;
    if len_count.as_deref().is_some_and(|c| c != "bytes") {
        return Err(spec_error(key, "lengths must count bytes"));
    }
    Ok(FieldSpec {
        encoding,
        len_digits: len_type,
        max_len,
    })
}

fn encode_error(py: Python<'_>, field: &str, reason: &str) -> PyErr {
    let err = Iso8583EncodeError::new_err(format!("{reason}: field {field}"));
    let value = err.value(py);
    // Setting attributes on a fresh exception cannot fail in practice; the message has both anyway.
    let _ = value.setattr("field", field);
    let _ = value.setattr("reason", reason);
    err
}

fn codec_encode_error(py: Python<'_>, e: EncodeError) -> PyErr {
    encode_error(py, &e.field.to_string(), &e.to_string())
}

fn decode_error(py: Python<'_>, e: DecodeError) -> PyErr {
    let err = Iso8583DecodeError::new_err(e.to_string());
    let value = err.value(py);
    let _ = value.setattr("field", e.field.to_string());
    let _ = value.setattr("offset", e.offset);
    let _ = value.setattr("reason", e.reason.code());
    err
}

fn input<'a>(value: &'a Bound<'_, PyAny>) -> Input<'a> {
    match value.cast::<PyString>() {
        Ok(s) => match s.to_str() {
            Ok(text) => Input::Text(text),
            // A lone surrogate: no UTF-8 form, so neither ASCII nor hex.
            Err(_) => Input::Unencodable {
                chars: s.len().unwrap_or(0),
            },
        },
        // Not a str: refused like text that is not ASCII ("invalid data").
        Err(_) => Input::Unencodable { chars: 0 },
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_upper(bytes: &[u8], out: &mut String) {
    out.clear();
    for b in bytes {
        for nibble in [b >> 4, b & 0x0F] {
            out.push(char::from(
                HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
}

#[pymethods]
impl PyDialect {
    /// Iso8583Dialect(spec): the pyiso8583 spec dict (spec.py's SPEC).
    #[new]
    fn new(py: Python<'_>, spec: &Bound<'_, PyDict>) -> PyResult<Self> {
        let mut fields = Vec::new();
        let mut has_secondary = false;
        for (k, entry) in spec.iter() {
            let key: String = k
                .extract()
                .map_err(|_| PyTypeError::new_err("ISO 8583 spec keys must be str"))?;
            match key.as_str() {
                "h" => {
                    if number(&entry, &key, "max_len")? != 0 {
                        return Err(spec_error(&key, "message headers are not implemented"));
                    }
                }
                "t" => {
                    let s = field_spec(&key, &entry)?;
                    if s.encoding != Encoding::Ascii || s.len_digits != 0 {
                        return Err(spec_error(&key, "the MTI must be 4 fixed ASCII characters"));
                    }
                }
                "p" | "1" => {
                    let s = field_spec(&key, &entry)?;
                    if s.encoding != Encoding::Binary || s.len_digits != 0 || s.max_len != 8 {
                        return Err(spec_error(&key, "bitmaps must be 8 binary bytes"));
                    }
                    has_secondary |= key == "1";
                }
                _ => {
                    let n =
                        field_number(&key).ok_or_else(|| spec_error(&key, "not a field number"))?;
                    fields.push((n, field_spec(&key, &entry)?));
                }
            }
        }
        if !has_secondary && fields.iter().any(|(n, _)| *n > 64) {
            return Err(spec_error("1", "fields above 64 need the secondary bitmap"));
        }
        let dialect = Dialect::new(fields).map_err(PyValueError::new_err)?;
        let keys = (0..SLOTS)
            .map(|n| PyString::intern(py, &n.to_string()).unbind())
            .collect();
        let mti_key = PyString::intern(py, "t").unbind();
        Ok(PyDialect {
            dialect,
            keys,
            mti_key,
        })
    }

    /// encode(message) -> bytes: 't' and the dialect's field numbers to values (binary fields in hex).
    fn encode<'py>(&self, message: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyBytes>> {
        let py = message.py();
        let mut mti: Option<Bound<'py, PyAny>> = None;
        let mut values: Vec<Option<Bound<'py, PyAny>>> = vec![None; SLOTS];
        for (k, v) in message.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(encode_error(py, "?", "field keys must be str"));
            };
            let key = key.to_str().unwrap_or("?");
            if key == "t" {
                mti = Some(v);
                continue;
            }
            let slot = field_number(key)
                .filter(|n| self.dialect.field(*n).is_some())
                .and_then(|n| values.get_mut(n));
            match slot {
                Some(slot) => *slot = Some(v),
                None => return Err(encode_error(py, &shown(key), "field outside our dialect")),
            }
        }
        let inputs: Vec<Option<Input<'_>>> = values.iter().map(|v| v.as_ref().map(input)).collect();
        let out = self
            .dialect
            .encode(mti.as_ref().map(input), &inputs)
            .map_err(|e| codec_encode_error(py, e))?;
        Ok(PyBytes::new(py, &out))
    }

    /// decode(payload) -> dict: 't' and each present field (binary fields as upper-case hex).
    fn decode<'py>(&self, payload: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let py = payload.py();
        if let Ok(b) = payload.cast::<PyBytes>() {
            self.unpack(py, b.as_bytes())
        } else if let Ok(b) = payload.cast::<PyByteArray>() {
            self.unpack(py, &b.to_vec())
        } else {
            Err(PyTypeError::new_err(
                "an ISO 8583 payload must be bytes or bytearray",
            ))
        }
    }
}

impl PyDialect {
    fn unpack<'py>(&self, py: Python<'py>, frame: &[u8]) -> PyResult<Bound<'py, PyDict>> {
        let msg = self
            .dialect
            .decode(frame)
            .map_err(|e| decode_error(py, e))?;
        let out = PyDict::new(py);
        out.set_item(self.mti_key.bind(py), PyString::new(py, msg.mti))?;
        let mut hex = String::new();
        for (n, data) in msg.fields {
            let Some(key) = self.keys.get(n) else {
                return Err(decode_error(py, undefined(n)));
            };
            let value = match data {
                Data::Text(s) => PyString::new(py, s),
                Data::Binary(b) => {
                    hex_upper(b, &mut hex);
                    PyString::new(py, &hex)
                }
            };
            out.set_item(key.bind(py), value)?;
        }
        Ok(out)
    }
}

fn undefined(n: usize) -> DecodeError {
    DecodeError {
        field: Field::Data(n),
        offset: 0,
        reason: crate::iso8583::DecodeReason::UndefinedField,
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyDialect>()?;
    m.add("Iso8583EncodeError", py.get_type::<Iso8583EncodeError>())?;
    m.add("Iso8583DecodeError", py.get_type::<Iso8583DecodeError>())?;
    Ok(())
}
