//! Every native EMV entry point on arbitrary bytes: no panic, no hang, and the invariants hold.
//! Run: cargo +nightly fuzz run tlv fuzz/corpus/tlv -- -max_total_time=60
#![no_main]

use cloudlayer_native::{card, tlv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let valid = tlv::validate(data);
    let parsed = tlv::parse(data);
    // validate and parse agree on success and on the exact error.
    assert_eq!(valid.err(), parsed.as_ref().err().copied());
    let redacted = card::redact(data, &card::SENSITIVE);
    let _ = card::card_data(data);
    let _ = card::masked_pan(data);
    let _ = card::build_response(*b"00", data);
    if let Ok(tree) = parsed {
        assert!(redacted.is_ok());
        // Re-encoding with nothing removed gives canonical TLV that parses to the same shape.
        let canonical = card::redact(data, &[]).expect("valid input re-encodes");
        let again = tlv::parse(&canonical).expect("canonical output parses");
        assert_eq!(again.len(), tree.len());
        assert_eq!(card::redact(&canonical, &[]).ok(), Some(canonical.clone()));
        // Redacted output is valid and never grows.
        let r = redacted.unwrap_or_default();
        assert!(tlv::validate(&r).is_ok());
        assert!(r.len() <= data.len());
    } else {
        assert!(redacted.is_err());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = tlv::decode_hex(s).map(|b| tlv::validate(&b));
    }
});
