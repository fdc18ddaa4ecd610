//! Unit tests of the table-driven codec. The table below is docs/iso8583.md's; the Python tests build
//! the dialect from spec.py itself and hold it to pyiso8583.

use super::*;

fn ours() -> Dialect {
    use Encoding::{Ascii as A, Binary as B};
    let table: [(usize, Encoding, u8, usize); 24] = [
        (2, A, 2, 19),
        (3, A, 0, 6),
        (4, A, 0, 12),
        (7, A, 0, 10),
        (11, A, 0, 6),
        (12, A, 0, 6),
        (13, A, 0, 4),
        (14, A, 0, 4),
        (22, A, 0, 3),
        (23, A, 0, 3),
        (32, A, 2, 11),
        (35, A, 2, 37),
        (37, A, 0, 12),
        (38, A, 0, 6),
        (39, A, 0, 2),
        (41, A, 0, 8),
        (42, A, 0, 15),
        (49, A, 0, 3),
        (52, B, 0, 8),
        (55, B, 3, 999),
        (70, A, 0, 3),
        (90, A, 0, 42),
        (5, A, 1, 9),
        (6, B, 1, 9),
    ];
    let fields = table.iter().map(|&(n, encoding, len_digits, max_len)| {
        (
            n,
            FieldSpec {
                encoding,
                len_digits,
                max_len,
            },
        )
    });
    Dialect::new(fields).expect("our table is valid")
}

fn slots<'a>(pairs: &[(usize, &'a str)]) -> Vec<Option<Input<'a>>> {
    let mut v = vec![None; 129];
    for &(n, s) in pairs {
        v[n] = Some(Input::Text(s));
    }
    v
}

fn enc(mti: &str, pairs: &[(usize, &str)]) -> Result<Vec<u8>, EncodeError> {
    ours().encode(Some(Input::Text(mti)), &slots(pairs))
}

fn sign_on() -> Vec<u8> {
    enc(
        "0800",
        &[
            (7, "1126120000"),
            (11, "000001"),
            (32, "123456"),
            (70, "001"),
        ],
    )
    .expect("ok")
}

#[test]
fn packs_a_sign_on_with_its_secondary_bitmap() {
    let mut want = b"0800".to_vec();
    want.extend([0x82, 0x20, 0, 0x01, 0, 0, 0, 0]); // bits 1, 7, 11, 32
    want.extend([0x04, 0, 0, 0, 0, 0, 0, 0]); // bit 70
    want.extend(b"1126120000000001" as &[u8]);
    want.extend(b"06123456001" as &[u8]);
    assert_eq!(sign_on(), want);
}

#[test]
fn round_trips_text_binary_and_variable_fields() {
    let frame = enc(
        "0200",
        &[
            (2, "4761739001010119"),
            (52, "00112233445566ff"),
            (55, "9f2701"),
        ],
    )
    .expect("ok");
    let msg = ours().decode(&frame).expect("decodes");
    assert_eq!(msg.mti, "0200");
    assert_eq!(
        msg.fields,
        vec![
            (2, Data::Text("4761739001010119")),
            (
                52,
                Data::Binary(&[0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0xFF])
            ),
            (55, Data::Binary(&[0x9F, 0x27, 0x01])),
        ]
    );
    assert!(
        frame.windows(3).any(|w| w == b"003"),
        "LLL prefix counts bytes"
    );
}

#[test]
fn encode_errors_name_the_field_in_pyiso8583s_words() {
    let e = ours().encode(None, &slots(&[])).expect_err("no MTI");
    assert_eq!(
        (e.field, e.to_string()),
        (Field::Mti, "Field data is required".into())
    );
    let e = enc("020", &[]).expect_err("short MTI");
    assert_eq!(e.to_string(), "Field data is 3 bytes, expecting 4");
    let e = enc("0200", &[(4, "1000")]).expect_err("fixed");
    assert_eq!(
        (e.field, e.to_string()),
        (Field::Data(4), "Field data is 4 bytes, expecting 12".into())
    );
    let e = enc("0200", &[(2, "47617390010101190000")]).expect_err("too long");
    assert_eq!(
        e.to_string(),
        "Field data is 20 bytes, larger than maximum 19"
    );
    let e = enc("0200", &[(55, "9f2")]).expect_err("odd");
    assert_eq!(e.to_string(), "Failed to encode field, odd-length hex data");
    let e = enc("0200", &[(52, "zz112233445566ff")]).expect_err("non-hex");
    assert_eq!(e.to_string(), "Failed to encode field, non-hex data");
    let e = enc("0200", &[(52, "é0112233445566ff")]).expect_err("non-ascii hex");
    assert_eq!(e.reason, EncodeReason::NonHex);
    let e = enc("0200", &[(41, "TERMé01")]).expect_err("non-ascii text");
    assert_eq!(e.to_string(), "Failed to encode field, invalid data");
    let e = enc("0200", &[(3, "0000000"), (2, "é")]).expect_err("first field first");
    assert_eq!(e.field, Field::Data(2));
    let lone = Input::Unencodable { chars: 3 };
    let mut v = slots(&[]);
    v[55] = Some(lone);
    let e = ours()
        .encode(Some(Input::Text("0200")), &v)
        .expect_err("surrogate");
    assert_eq!(e.reason, EncodeReason::OddHex);
}

#[test]
fn empty_variable_fields_and_maximum_lengths_encode() {
    let max55 = "ab".repeat(999);
    let frame = enc("0200", &[(2, ""), (55, &max55)]).expect("ok");
    let msg = ours().decode(&frame).expect("decodes");
    assert_eq!(msg.fields[0], (2, Data::Text("")));
    assert!(matches!(msg.fields[1], (55, Data::Binary(b)) if b.len() == 999));
}

fn reason(frame: &[u8]) -> DecodeReason {
    ours().decode(frame).expect_err("must be refused").reason
}

#[test]
fn every_truncation_and_any_trailing_byte_is_refused() {
    let frame = sign_on();
    for cut in 0..frame.len() {
        assert_eq!(
            reason(&frame[..cut]),
            DecodeReason::Truncated,
            "cut at {cut}"
        );
    }
    let mut long = frame.clone();
    long.push(b'0');
    assert_eq!(reason(&long), DecodeReason::TrailingBytes);
}

#[test]
fn frames_outside_the_dialect_are_refused() {
    let frame = sign_on();
    let with = |at: usize, b: u8| {
        let mut f = frame.clone();
        f[at] = b;
        f
    };
    assert_eq!(reason(&with(2, b'A')), DecodeReason::MtiNotDigits);
    assert_eq!(reason(&with(4, 0x83)), DecodeReason::UndefinedField); // bit 8
    assert_eq!(reason(&with(13, 0x06)), DecodeReason::UndefinedField); // bits 78, 79
    assert_eq!(reason(&with(12, 0x84)), DecodeReason::UndefinedField); // bit 65 (a tertiary bitmap)
    assert_eq!(reason(&with(12, 0x00)), DecodeReason::EmptySecondaryBitmap);
    assert_eq!(reason(&with(36, b'+')), DecodeReason::LengthNotDigits); // field 32's "06"
    assert_eq!(reason(&with(36, b' ')), DecodeReason::LengthNotDigits);
    assert_eq!(reason(&with(20, 0x80)), DecodeReason::NotAscii);
    let mut long = b"0200".to_vec();
    long.extend([0x40, 0, 0, 0, 0, 0, 0, 0]);
    long.extend(b"20" as &[u8]);
    long.extend([b'4'; 20]);
    assert_eq!(reason(&long), DecodeReason::TooLong);
}

#[test]
fn a_decoded_frame_encodes_back_to_itself() {
    let frame = sign_on();
    let msg = ours().decode(&frame).expect("decodes");
    let mut v = vec![None; 129];
    for (n, d) in &msg.fields {
        if let Data::Text(s) = d {
            v[*n] = Some(Input::Text(s));
        }
    }
    assert_eq!(
        ours().encode(Some(Input::Text(msg.mti)), &v).expect("ok"),
        frame
    );
}

#[test]
fn tables_the_codec_cannot_honour_are_refused() {
    let spec = |len_digits, max_len| FieldSpec {
        encoding: Encoding::Ascii,
        len_digits,
        max_len,
    };
    for n in [0, 1, 65, 129] {
        assert!(Dialect::new([(n, spec(0, 4))]).is_err(), "field {n}");
    }
    assert!(Dialect::new([(2, spec(4, 10))]).is_err());
    assert!(Dialect::new([(2, spec(2, 100))]).is_err());
    assert!(Dialect::new([(2, spec(2, 99))]).is_ok());
}
