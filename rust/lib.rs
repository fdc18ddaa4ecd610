//! CloudLayer's native module: the byte work on the transaction hot path (EMV BER-TLV decode,
//! encode, redaction, card data, response EMV data, the request fingerprint, and ISO 8583 pack/unpack).
//!
//! `tlv`, `card`, `fingerprint` and `iso8583` are plain Rust (unit-tested and fuzzed without Python);
//! `py_emv` and `py_iso8583` only convert between them and Python objects.
// No panic reachable from Python input: outside tests, no indexing, unwrap, expect or panic.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod card;
pub mod fingerprint;
pub mod iso8583;
mod py_emv;
mod py_iso8583;
pub mod tlv;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py_emv::register(m)?;
    py_iso8583::register(m)
}
