//! The Python face of the EMV and fingerprint code: conversions only, the rules live in `tlv`,
//! `card` and `fingerprint`.

use std::collections::HashMap;
use std::sync::Mutex;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyInt, PyList, PyString, PyTuple};

use crate::card::{self, CardData};
use crate::fingerprint::{fingerprint as digest_fields, Value};
use crate::tlv::{self, Reader, Reason, Tag, TlvError, MAX_DEPTH};

pyo3::create_exception!(
    cloudlayer.emv,
    TLVError,
    PyValueError,
    "Malformed BER-TLV. `offset` is the byte offset (in the hex string for hex errors) and `reason` a \
     stable code; the message never contains any of the data."
);

fn tlv_error(py: Python<'_>, e: TlvError) -> PyErr {
    let err = TLVError::new_err(e.to_string());
    let value = err.value(py);
    // Setting attributes on a fresh exception instance cannot fail in practice; if it did, the
    // message still carries the offset and reason.
    let _ = value.setattr("offset", e.offset);
    let _ = value.setattr("reason", e.reason.code());
    err
}

/// Runs `f` over the input's bytes: bytes borrowed as they are, a hex str decoded, a bytearray copied.
fn with_input<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> PyResult<R>) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        f(b.as_bytes())
    } else if let Ok(s) = data.cast::<PyString>() {
        let bytes = tlv::decode_hex(s.to_str()?).map_err(|e| tlv_error(data.py(), e))?;
        f(&bytes)
    } else if let Ok(b) = data.cast::<PyByteArray>() {
        f(&b.to_vec())
    } else {
        Err(PyTypeError::new_err(
            "EMV data must be bytes, bytearray or a hex str",
        ))
    }
}

/// Runs a pure-Rust check over the input, turning its error into `TLVError`.
fn with_tlv<R>(
    data: &Bound<'_, PyAny>,
    f: impl FnOnce(&[u8]) -> Result<R, TlvError>,
) -> PyResult<R> {
    let py = data.py();
    with_input(data, |bytes| f(bytes).map_err(|e| tlv_error(py, e)))
}

/// Tag strings are made once and shared: every 1-byte tag and every 2-byte tag (8 first bytes with
/// the low five bits set x 128 second bytes) up front, longer ones cached up to a bound so hostile
/// input cannot grow memory without limit.
struct TagStrings {
    short: Vec<Py<PyString>>,
    long: Mutex<HashMap<Tag, Py<PyString>>>,
}

const LONG_TAG_CACHE_MAX: usize = 1024;
const SHORT_TAGS: usize = 256 + 8 * 128;

fn short_index(tag: Tag) -> Option<usize> {
    let t = usize::try_from(tag).ok()?;
    if t <= 0xFF {
        return Some(t);
    }
    let (b0, b1) = (t >> 8, t & 0xFF);
    (b0 <= 0xFF && b0 & 0x1F == 0x1F && b1 < 0x80).then(|| 256 + (b0 >> 5) * 128 + b1)
}

static TAG_STRINGS: PyOnceLock<TagStrings> = PyOnceLock::new();

fn tag_strings(py: Python<'_>) -> &TagStrings {
    TAG_STRINGS.get_or_init(py, || {
        let one = 0..=0xFFu32;
        let two =
            (0..8u32).flat_map(|hi| (0..0x80u32).map(move |lo| (((hi << 5) | 0x1F) << 8) | lo));
        let short: Vec<Py<PyString>> = one
            .chain(two)
            .map(|t| PyString::new(py, &tlv::tag_hex(t)).unbind())
            .collect();
        debug_assert_eq!(short.len(), SHORT_TAGS);
        TagStrings {
            short,
            long: Mutex::new(HashMap::new()),
        }
    })
}

impl TagStrings {
    fn get<'py>(&self, py: Python<'py>, tag: Tag) -> Bound<'py, PyString> {
        if let Some(s) = short_index(tag).and_then(|i| self.short.get(i)) {
            return s.bind(py).clone();
        }
        let Ok(mut long) = self.long.lock() else {
            return PyString::new(py, &tlv::tag_hex(tag));
        };
        if let Some(s) = long.get(&tag) {
            return s.bind(py).clone();
        }
        let s = PyString::new(py, &tlv::tag_hex(tag));
        if long.len() < LONG_TAG_CACHE_MAX {
            long.insert(tag, s.clone().unbind());
        }
        s
    }
}

enum Fail {
    Tlv(TlvError),
    Py(PyErr),
}

impl From<PyErr> for Fail {
    fn from(e: PyErr) -> Self {
        Fail::Py(e)
    }
}

fn decode_level<'py>(
    py: Python<'py>,
    tags: &TagStrings,
    data: &[u8],
    base: usize,
    depth: usize,
) -> Result<Bound<'py, PyList>, Fail> {
    let mut items: Vec<Bound<'py, PyTuple>> = Vec::with_capacity(data.len() / 4 + 1);
    for item in Reader::new(data, base) {
        let t = item.map_err(Fail::Tlv)?;
        let value = if t.constructed {
            if depth > MAX_DEPTH {
                return Err(Fail::Tlv(TlvError {
                    offset: t.offset,
                    reason: Reason::TooDeep,
                }));
            }
            decode_level(py, tags, t.value, t.value_offset, depth + 1)?.into_any()
        } else {
            PyBytes::new(py, t.value).into_any()
        };
        items.push((tags.get(py, t.tag), value).into_pyobject(py)?);
    }
    Ok(PyList::new(py, items)?)
}

/// decode(data) -> list[(tag, bytes | list)]
#[pyfunction]
fn decode<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let py = data.py();
    let tags = tag_strings(py);
    with_input(data, |bytes| {
        decode_level(py, tags, bytes, 0, 1).map_err(|f| match f {
            Fail::Tlv(e) => tlv_error(py, e),
            Fail::Py(e) => e,
        })
    })
}

fn tag_for_display(s: &str) -> String {
    s.chars().take(16).collect()
}

fn parse_tag(obj: &Bound<'_, PyAny>) -> PyResult<Tag> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("a tag must be a hex str such as '9F26'"))?
        .to_str()?;
    tlv::parse_tag_hex(s).ok_or_else(|| {
        PyValueError::new_err(format!(
            "invalid tag {:?}: expected 1 to 4 bytes of well-formed BER tag in hex",
            tag_for_display(s)
        ))
    })
}

fn encode_level(items: &Bound<'_, PyAny>, depth: usize, out: &mut Vec<u8>) -> PyResult<()> {
    for item in items.try_iter()? {
        let item = item?;
        let pair = item
            .cast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("each item must be a (tag, value) tuple"))?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err(
                "each item must be a (tag, value) tuple",
            ));
        }
        let tag = parse_tag(&pair.get_item(0)?)?;
        let value = pair.get_item(1)?;
        let constructed = tlv::is_constructed(tag);
        let shown = || tlv::tag_hex(tag);
        let too_long =
            |_| PyValueError::new_err(format!("value of {} is longer than 65535 bytes", shown()));
        if let Ok(b) = value.cast::<PyBytes>() {
            if constructed {
                return Err(PyValueError::new_err(format!(
                    "{} is a constructed tag: its value must be a list",
                    shown()
                )));
            }
            tlv::write_tlv(out, tag, b.as_bytes()).map_err(too_long)?;
        } else if let Ok(b) = value.cast::<PyByteArray>() {
            if constructed {
                return Err(PyValueError::new_err(format!(
                    "{} is a constructed tag: its value must be a list",
                    shown()
                )));
            }
            tlv::write_tlv(out, tag, &b.to_vec()).map_err(too_long)?;
        } else if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
            if !constructed {
                return Err(PyValueError::new_err(format!(
                    "{} is a primitive tag: its value must be bytes",
                    shown()
                )));
            }
            if depth > MAX_DEPTH {
                return Err(PyValueError::new_err(format!(
                    "templates nested more than {MAX_DEPTH} deep"
                )));
            }
            let mut inner = Vec::new();
            encode_level(&value, depth + 1, &mut inner)?;
            tlv::write_tlv(out, tag, &inner).map_err(too_long)?;
        } else {
            return Err(PyTypeError::new_err(format!(
                "value of {} must be bytes (primitive) or a list (constructed)",
                shown()
            )));
        }
    }
    Ok(())
}

/// encode(items) -> bytes, with minimal lengths.
#[pyfunction]
fn encode<'py>(items: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(256);
    encode_level(items, 1, &mut out)?;
    Ok(PyBytes::new(items.py(), &out))
}

/// redact(data, tags=None) -> bytes; `None` means the built-in sensitive set.
#[pyfunction]
#[pyo3(signature = (data, tags=None))]
fn redact<'py>(
    data: &Bound<'py, PyAny>,
    tags: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let remove: Vec<Tag> = match tags {
        None => card::SENSITIVE.to_vec(),
        Some(t) => t
            .try_iter()?
            .map(|item| parse_tag(&item?))
            .collect::<PyResult<_>>()?,
    };
    let out = with_tlv(data, |bytes| card::redact(bytes, &remove))?;
    Ok(PyBytes::new(data.py(), &out))
}

/// masked_pan(data) -> str | None
#[pyfunction]
fn masked_pan(data: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    with_tlv(data, card::masked_pan)
}

/// The card data the acquirer message needs. Its repr never shows the PAN or track 2.
#[pyclass(frozen, module = "cloudlayer.emv", name = "CardData")]
pub struct PyCardData {
    /// 5A digits (or the track 2 PAN when 5A is absent).
    #[pyo3(get)]
    pan: String,
    /// 5F24 as YYMMDD.
    #[pyo3(get)]
    expiry: Option<String>,
    /// 5F34 as two digits.
    #[pyo3(get)]
    pan_sequence: Option<String>,
    /// 57 as digits with the D separator, padding stripped.
    #[pyo3(get)]
    track2: Option<String>,
    /// 9F36 (Application Transaction Counter) as sent.
    atc: Option<Vec<u8>>,
    /// 9F26 (Application Cryptogram) as sent.
    cryptogram: Option<Vec<u8>>,
}

#[pymethods]
impl PyCardData {
    /// The PAN as first 6 / last 4, for logs and records.
    #[getter]
    fn masked_pan(&self) -> String {
        card::mask_pan_str(&self.pan)
    }

    /// 9F36 as sent (bytes; a list of ints is what a plain `get` would give).
    #[getter]
    fn atc<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.atc.as_deref().map(|v| PyBytes::new(py, v))
    }

    /// 9F26 as sent.
    #[getter]
    fn cryptogram<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.cryptogram.as_deref().map(|v| PyBytes::new(py, v))
    }

    fn __repr__(&self) -> String {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "None" };
        format!(
            "CardData(pan='{}', expiry={}, pan_sequence={}, track2={}, atc={}, cryptogram={})",
            card::mask_pan_str(&self.pan),
            set(&self.expiry),
            self.pan_sequence
                .as_deref()
                .map_or("None".to_owned(), |s| format!("'{s}'")),
            set(&self.track2),
            if self.atc.is_some() { "<set>" } else { "None" },
            if self.cryptogram.is_some() {
                "<set>"
            } else {
                "None"
            },
        )
    }
}

/// card_data(data) -> CardData | None (None when there is no PAN: neither 5A nor 57).
#[pyfunction]
fn card_data(data: &Bound<'_, PyAny>) -> PyResult<Option<PyCardData>> {
    let card = with_tlv(data, card::card_data)?;
    Ok(card.and_then(|c: CardData| {
        Some(PyCardData {
            pan: c.pan?,
            expiry: c.expiry,
            pan_sequence: c.pan_sequence,
            track2: c.track2,
            atc: c.atc,
            cryptogram: c.cryptogram,
        })
    }))
}

/// fingerprint(fields) -> 32-byte SHA-256, independent of field order.
#[pyfunction]
fn fingerprint<'py>(fields: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let py = fields.py();
    let mut held: Vec<(Bound<'py, PyString>, Bound<'py, PyAny>)> = Vec::with_capacity(16);
    for item in fields.try_iter()? {
        let item = item?;
        let pair = item
            .cast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("each field must be a (name, value) tuple"))?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err(
                "each field must be a (name, value) tuple",
            ));
        }
        let name = pair
            .get_item(0)?
            .cast_into::<PyString>()
            .map_err(|_| PyTypeError::new_err("a field name must be a str"))?;
        held.push((name, pair.get_item(1)?));
    }
    let mut values: Vec<(&str, Value<'_>)> = Vec::with_capacity(held.len());
    for (name, v) in &held {
        let value = if v.is_none() {
            Value::None
        } else if let Ok(b) = v.cast::<PyBool>() {
            Value::Bool(b.is_true())
        } else if v.is_instance_of::<PyInt>() {
            Value::Int(v.extract::<i128>()?)
        } else if let Ok(s) = v.cast::<PyString>() {
            Value::Str(s.to_str()?)
        } else if let Ok(b) = v.cast::<PyBytes>() {
            Value::Bytes(b.as_bytes())
        } else {
            return Err(PyTypeError::new_err(
                "a field value must be str, int, bytes, bool or None",
            ));
        };
        values.push((name.to_str()?, value));
    }
    let digest = digest_fields(&mut values)
        .map_err(|d| PyValueError::new_err(format!("field {:?} given twice", d.0)))?;
    Ok(PyBytes::new(py, &digest))
}

/// build_response_emv(response_code, issuer_icc) -> bytes: 8A first, then the issuer's objects.
#[pyfunction]
fn build_response_emv<'py>(
    response_code: &str,
    issuer_icc: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let code: [u8; 2] = response_code
        .as_bytes()
        .try_into()
        .ok()
        .filter(|c: &[u8; 2]| c.iter().all(u8::is_ascii_alphanumeric))
        .ok_or_else(|| PyValueError::new_err("response code must be 2 ASCII letters or digits"))?;
    let out = with_tlv(issuer_icc, |bytes| card::build_response(code, bytes))?;
    Ok(PyBytes::new(issuer_icc.py(), &out))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TLVError", py.get_type::<TLVError>())?;
    m.add_class::<PyCardData>()?;
    m.add("MAX_DEPTH", MAX_DEPTH)?;
    let sensitive: Vec<String> = card::SENSITIVE.iter().map(|t| tlv::tag_hex(*t)).collect();
    m.add("SENSITIVE_TAGS", PyTuple::new(py, sensitive)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(redact, m)?)?;
    m.add_function(wrap_pyfunction!(masked_pan, m)?)?;
    m.add_function(wrap_pyfunction!(card_data, m)?)?;
    m.add_function(wrap_pyfunction!(fingerprint, m)?)?;
    m.add_function(wrap_pyfunction!(build_response_emv, m)?)?;
    tag_strings(py);
    Ok(())
}
