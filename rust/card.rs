//! Card data in field 55: redaction for storage and logs, the few values the acquirer message needs,
//! and the response's EMV data. No Python types here.
//!
//! Nothing in this module ever puts a byte of card data into an error: errors are offsets and reasons.

use crate::tlv::{self, Node, Reader, Reason, Tag, TlvError, MAX_DEPTH};

pub const TAG_PAN: Tag = 0x5A;
pub const TAG_TRACK2: Tag = 0x57;
pub const TAG_EXPIRY: Tag = 0x5F24;
pub const TAG_PAN_SEQUENCE: Tag = 0x5F34;
pub const TAG_ARC: Tag = 0x8A;
pub const TAG_ATC: Tag = 0x9F36;
pub const TAG_CRYPTOGRAM: Tag = 0x9F26;

/// What PCI DSS forbids keeping after authorization (removed) plus cardholder data we reduce:
/// 57/56 track 2/1 equivalent, 9F1F/9F20 track 1/2 discretionary data, 99 PIN data, 9F6B
/// (Mastercard track 2; the same tag is not track data for every scheme, but we cannot tell which
/// scheme's meaning applies from the TLV alone, so it is always removed), 5F20/9F0B cardholder name,
/// 5A PAN (masked, not removed).
pub const SENSITIVE: [Tag; 9] = [
    0x57, 0x56, 0x9F1F, 0x9F20, 0x99, 0x9F6B, 0x5F20, 0x9F0B, TAG_PAN,
];

/// The nibble written over hidden PAN digits in a redacted 5A. Not a digit (so a masked PAN can
/// never be mistaken for a real one) and not the `F` padding nibble (so readers that stop at the
/// first `F` still see the length and the last four).
pub const MASK_NIBBLE: u8 = 0xA;

/// How many leading/trailing PAN digits stay visible, and the shortest PAN for which we show them
/// (below that, 6 + 4 would reveal too much of the number, so every digit is hidden).
const KEEP_FIRST: usize = 6;
const KEEP_LAST: usize = 4;
const MIN_DIGITS_TO_SHOW: usize = 13;

fn is_shown(i: usize, n: usize) -> bool {
    n >= MIN_DIGITS_TO_SHOW && (i < KEEP_FIRST || i + KEEP_LAST >= n)
}

/// Number of PAN digits in a cn value: its nibbles up to the trailing `F` padding.
fn digit_count(value: &[u8]) -> usize {
    let nibbles = value.len() * 2;
    let trailing_f = value
        .iter()
        .rev()
        .flat_map(|b| [b & 0x0F, b >> 4])
        .take_while(|n| *n == 0x0F)
        .count();
    nibbles - trailing_f
}

/// The 5A value with the hidden digits overwritten by [`MASK_NIBBLE`]; same length, padding kept.
pub fn mask_pan_bcd(value: &[u8]) -> Vec<u8> {
    let n = digit_count(value);
    value
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (hi_i, lo_i) = (2 * i, 2 * i + 1);
            let hi = if hi_i < n && !is_shown(hi_i, n) {
                MASK_NIBBLE
            } else {
                b >> 4
            };
            let lo = if lo_i < n && !is_shown(lo_i, n) {
                MASK_NIBBLE
            } else {
                b & 0x0F
            };
            (hi << 4) | lo
        })
        .collect()
}

/// `"4761739001010119"` -> `"476173******0119"`; PANs under 13 digits are hidden entirely.
pub fn mask_pan_str(pan: &str) -> String {
    let n = pan.chars().count();
    pan.chars()
        .enumerate()
        .map(|(i, c)| if is_shown(i, n) { c } else { '*' })
        .collect()
}

/// Upper-case hex of a cn value without its trailing `F` padding.
fn cn_digits(value: &[u8]) -> String {
    let mut s = tlv::hex_upper(value);
    s.truncate(digit_count(value));
    s
}

/// Removes `remove` tags (recursing into templates) and masks 5A when it is listed. Padding is
/// dropped and lengths are rewritten minimally; order and nesting are kept.
pub fn redact(data: &[u8], remove: &[Tag]) -> Result<Vec<u8>, TlvError> {
    fn level(nodes: &[Node<'_>], remove: &[Tag], out: &mut Vec<u8>) -> Result<(), TlvError> {
        for node in nodes {
            let tlv = &node.tlv;
            let listed = remove.contains(&tlv.tag);
            let written = if listed && tlv.tag == TAG_PAN && !tlv.constructed {
                tlv::write_tlv(out, tlv.tag, &mask_pan_bcd(tlv.value))
            } else if listed {
                continue;
            } else if tlv.constructed {
                let mut inner = Vec::with_capacity(tlv.value.len());
                level(&node.children, remove, &mut inner)?;
                tlv::write_tlv(out, tlv.tag, &inner)
            } else {
                tlv::write_tlv(out, tlv.tag, tlv.value)
            };
            // Redaction never grows a value, so this cannot fail; report it as the input's fault if it did.
            written.map_err(|_| TlvError {
                offset: tlv.offset,
                reason: Reason::ValueOverrun,
            })?;
        }
        Ok(())
    }
    let tree = tlv::parse(data)?;
    let mut out = Vec::with_capacity(data.len());
    level(&tree, remove, &mut out)?;
    Ok(out)
}

/// The first 5A found (depth first), masked for display; `None` when there is none. Works on
/// redacted data too (the digits it shows are never the masked ones).
pub fn masked_pan(data: &[u8]) -> Result<Option<String>, TlvError> {
    Ok(first_primitive(data, TAG_PAN)?.map(|v| mask_pan_str(&cn_digits(v))))
}

/// The value of the first primitive `tag`, depth first, after checking the whole structure.
pub fn first_primitive(data: &[u8], tag: Tag) -> Result<Option<&[u8]>, TlvError> {
    fn find<'a>(nodes: &[Node<'a>], tag: Tag) -> Option<&'a [u8]> {
        nodes.iter().find_map(|n| {
            if n.tlv.constructed {
                find(&n.children, tag)
            } else {
                (n.tlv.tag == tag).then_some(n.tlv.value)
            }
        })
    }
    Ok(find(&tlv::parse(data)?, tag))
}

/// What the acquirer message needs from field 55.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CardData {
    /// 5A digits, or the track 2 PAN when 5A is absent.
    pub pan: Option<String>,
    /// 5F24 as YYMMDD.
    pub expiry: Option<String>,
    /// 5F34 as two digits.
    pub pan_sequence: Option<String>,
    /// 57 as digits with the `D` separator, padding stripped.
    pub track2: Option<String>,
    /// 9F36 Application Transaction Counter, as sent (binary, 2 bytes in EMV).
    pub atc: Option<Vec<u8>>,
    /// 9F26 Application Cryptogram, as sent (binary, 8 bytes in EMV).
    pub cryptogram: Option<Vec<u8>>,
}

fn bad(offset: usize) -> TlvError {
    TlvError {
        offset,
        reason: Reason::BadCardData,
    }
}

fn digits_only(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// One pass over the data (templates included), keeping the first occurrence of each tag and
/// checking each is well-formed BCD. Structure errors are reported like `decode`'s.
fn scan(data: &[u8]) -> Result<CardData, TlvError> {
    fn level(data: &[u8], base: usize, depth: usize, card: &mut CardData) -> Result<(), TlvError> {
        for item in Reader::new(data, base) {
            let t = item?;
            if t.constructed {
                if depth > MAX_DEPTH {
                    return Err(TlvError {
                        offset: t.offset,
                        reason: Reason::TooDeep,
                    });
                }
                level(t.value, t.value_offset, depth + 1, card)?;
                continue;
            }
            let at = t.value_offset;
            match t.tag {
                TAG_PAN if card.pan.is_none() => {
                    let pan = cn_digits(t.value);
                    if !digits_only(&pan) {
                        return Err(bad(at));
                    }
                    card.pan = Some(pan);
                }
                TAG_TRACK2 if card.track2.is_none() => {
                    let t2 = cn_digits(t.value);
                    let valid = t2.bytes().all(|b| b.is_ascii_digit() || b == b'D')
                        && t2.bytes().filter(|b| *b == b'D').count() == 1;
                    if !valid {
                        return Err(bad(at));
                    }
                    card.track2 = Some(t2);
                }
                TAG_EXPIRY if card.expiry.is_none() => {
                    let e = tlv::hex_upper(t.value);
                    if e.len() != 6 || !digits_only(&e) {
                        return Err(bad(at));
                    }
                    card.expiry = Some(e);
                }
                TAG_PAN_SEQUENCE if card.pan_sequence.is_none() => {
                    let s = tlv::hex_upper(t.value);
                    if s.len() != 2 || !digits_only(&s) {
                        return Err(bad(at));
                    }
                    card.pan_sequence = Some(s);
                }
                // Binary values: kept as sent, for the card transaction's identity (the store's card key).
                TAG_ATC if card.atc.is_none() => card.atc = Some(t.value.to_vec()),
                TAG_CRYPTOGRAM if card.cryptogram.is_none() => {
                    card.cryptogram = Some(t.value.to_vec());
                }
                _ => {}
            }
        }
        Ok(())
    }
    let mut card = CardData::default();
    level(data, 0, 1, &mut card)?;
    Ok(card)
}

/// The card data, or `None` when the data carries no PAN (neither 5A nor 57).
pub fn card_data(data: &[u8]) -> Result<Option<CardData>, TlvError> {
    let mut card = scan(data)?;
    if card.pan.is_none() {
        if let Some(t2) = &card.track2 {
            card.pan = t2
                .split('D')
                .next()
                .filter(|p| digits_only(p))
                .map(str::to_owned);
        }
    }
    Ok(card.pan.is_some().then_some(card))
}

/// The response's EMV data: 8A first, then every other object the issuer sent, in its order and
/// byte for byte. If the issuer sent 8A we keep the issuer's (its ARPC in 91 is computed over that
/// ARC, so replacing it would make the card reject the issuer authentication); otherwise 8A carries
/// `response_code` (field 39). Further 8As from the issuer are dropped.
pub fn build_response(response_code: [u8; 2], issuer: &[u8]) -> Result<Vec<u8>, TlvError> {
    tlv::validate(issuer)?;
    let mut objects = Vec::new();
    let mut arc: Option<&[u8]> = None;
    for item in Reader::new(issuer, 0) {
        let t = item?;
        if t.tag == TAG_ARC {
            arc = arc.or(Some(t.raw));
        } else {
            objects.push(t.raw);
        }
    }
    let mut out = Vec::with_capacity(issuer.len() + 4);
    match arc {
        Some(raw) => out.extend_from_slice(raw),
        None => out.extend_from_slice(&[0x8A, 0x02, response_code[0], response_code[1]]),
    }
    for raw in objects {
        out.extend_from_slice(raw);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlv::decode_hex;

    fn h(s: &str) -> Vec<u8> {
        decode_hex(s).expect("test hex")
    }

    #[test]
    fn masks_pan_six_four() {
        assert_eq!(mask_pan_str("4761739001010119"), "476173******0119");
        assert_eq!(mask_pan_str("476173900101011"), "476173*****1011");
        assert_eq!(mask_pan_str("476173900101"), "************");
        assert_eq!(
            tlv::hex_upper(&mask_pan_bcd(&h("4761739001010119"))),
            "476173AAAAAA0119"
        );
        assert_eq!(
            tlv::hex_upper(&mask_pan_bcd(&h("476173900101011F"))),
            "476173AAAAA1011F"
        );
    }

    #[test]
    fn redacts_recursively_and_keeps_structure() {
        let data = h("70185A0847617390010101195F20034A4F4E9F1F023132570100009F02020100");
        let out = redact(&data, &SENSITIVE).expect("ok");
        assert_eq!(tlv::hex_upper(&out), "700A5A08476173AAAAAA01199F02020100");
    }

    #[test]
    fn card_data_one_pass() {
        let data = h("771F5A0847617390010101195F24032212315F3401015709476173900101D2212F");
        let card = card_data(&data).expect("ok").expect("some");
        assert_eq!(card.pan.as_deref(), Some("4761739001010119"));
        assert_eq!(card.expiry.as_deref(), Some("221231"));
        assert_eq!(card.pan_sequence.as_deref(), Some("01"));
        assert_eq!(card.track2.as_deref(), Some("476173900101D2212"));
        assert_eq!(card.atc, None);
        assert_eq!(card.cryptogram, None);
        assert_eq!(card_data(&h("9F02020100")).expect("ok"), None);
        let from_t2 = card_data(&h("5709476173900101D2212F"))
            .expect("ok")
            .expect("some");
        assert_eq!(from_t2.pan.as_deref(), Some("476173900101"));
        assert_eq!(
            card_data(&h("5A02AB12")).expect_err("bad").reason,
            Reason::BadCardData
        );
    }

    #[test]
    fn card_data_keeps_atc_and_cryptogram() {
        // The first of each, inside a template too; a later one does not replace it.
        let data = h("701F5A0847617390010101199F360200139F2608AABBCCDDEEFF00119F36020099");
        let card = card_data(&data).expect("ok").expect("some");
        assert_eq!(card.atc.as_deref(), Some(&[0x00, 0x13][..]));
        assert_eq!(
            card.cryptogram.as_deref(),
            Some(&[0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0x00, 0x11][..])
        );
        // Without a PAN there is no card data at all, ATC or not.
        assert_eq!(card_data(&h("9F36020013")).expect("ok"), None);
    }

    #[test]
    fn response_puts_8a_first() {
        let issuer = h("9108AABBCCDDEEFF00117107860501020304058A023035");
        let out = build_response(*b"00", &issuer).expect("ok");
        assert_eq!(
            tlv::hex_upper(&out),
            "8A0230359108AABBCCDDEEFF0011710786050102030405"
        );
        let out = build_response(*b"05", &[]).expect("ok");
        assert_eq!(tlv::hex_upper(&out), "8A023035");
        assert!(build_response(*b"00", &h("9108AA")).is_err());
    }
}
