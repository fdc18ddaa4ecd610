"""cloudlayer.emv: decoding hand-decoded samples, every error with its offset, encode, redact, card data,
the response's EMV data and the tag tables."""

from __future__ import annotations

import pytest

from cloudlayer import _native, emv
from cloudlayer.emv import TLVError
from cloudlayer.samples import SAMPLE_EMV_HEX as REQUEST_HEX

# A Visa contactless authorisation request's field 55 (24 tags, 173 bytes): the one copy is in
# cloudlayer/samples.py; the expectations below are decoded by hand, independently of it.

REQUEST_DECODED: list[tuple[str, emv.TLVValue]] = [
    ("9F02", bytes.fromhex("000000001000")),  # amount 10.00
    ("9F03", bytes.fromhex("000000000000")),
    ("9F26", bytes.fromhex("8E19ED4F2A1A4D2B")),  # ARQC
    ("82", bytes.fromhex("2000")),
    ("9F36", bytes.fromhex("0013")),
    ("9F10", bytes.fromhex("06011203A00000")),
    ("9F33", bytes.fromhex("E0F8C8")),
    ("9F1A", bytes.fromhex("0826")),
    ("95", bytes.fromhex("0000000000")),
    ("5F2A", bytes.fromhex("0826")),
    ("9A", bytes.fromhex("260315")),
    ("9C", bytes.fromhex("00")),
    ("9F37", bytes.fromhex("3D8B2C11")),
    ("9F27", bytes.fromhex("80")),
    ("9F34", bytes.fromhex("1F0302")),
    ("9F35", bytes.fromhex("22")),
    ("9F09", bytes.fromhex("008C")),
    ("84", bytes.fromhex("A0000000031010")),  # Visa credit/debit AID
    ("9F1E", b"12345678"),
    ("9F41", bytes.fromhex("00000042")),
    ("5A", bytes.fromhex("4761739001010119")),  # Visa test PAN
    ("5F34", bytes.fromhex("01")),
    ("5F24", bytes.fromhex("271231")),
    ("57", bytes.fromhex("4761739001010119D27122011143804400000F")),
]

PAN = "4761739001010119"
TRACK2 = "4761739001010119D27122011143804400000"

# The issuer's answer: ARC, 91 (ARPC + ARC), 71 and 72 issuer script templates (9F18 id + 86 commands).
ISSUER_HEX = (
    "910A3BA9C4B7A1F2E0D03030"
    "71129F1804000000018609841E000004A1B2C3D4"
    "72169F180400000002860D04DA9F580801020304A1B2C3D4"
    "8A023030"
)

ISSUER_DECODED: list[tuple[str, emv.TLVValue]] = [
    ("91", bytes.fromhex("3BA9C4B7A1F2E0D03030")),
    (
        "71",
        [
            ("9F18", bytes.fromhex("00000001")),
            ("86", bytes.fromhex("841E000004A1B2C3D4")),  # APPLICATION BLOCK with MAC
        ],
    ),
    (
        "72",
        [
            ("9F18", bytes.fromhex("00000002")),
            ("86", bytes.fromhex("04DA9F580801020304A1B2C3D4")),  # PUT DATA with MAC
        ],
    ),
    ("8A", b"00"),
]


def test_decodes_request_sample_by_hand() -> None:
    assert emv.decode(bytes.fromhex(REQUEST_HEX)) == REQUEST_DECODED
    assert len(bytes.fromhex(REQUEST_HEX)) == 173


def test_hex_input_in_either_case_and_bytearray() -> None:
    assert emv.decode(REQUEST_HEX.lower()) == REQUEST_DECODED
    assert emv.decode(REQUEST_HEX) == REQUEST_DECODED
    assert emv.decode(bytearray.fromhex(REQUEST_HEX)) == REQUEST_DECODED


def test_decodes_issuer_response_with_scripts() -> None:
    assert emv.decode(ISSUER_HEX) == ISSUER_DECODED


def test_tag_strings_are_shared_objects() -> None:
    first = emv.decode(REQUEST_HEX)
    second = emv.decode(REQUEST_HEX)
    assert all(a[0] is b[0] for a, b in zip(first, second, strict=True))
    long_tag = emv.decode("DF812901AA")[0][0]
    assert long_tag == "DF8129"
    assert emv.decode("DF812901AA")[0][0] is long_tag


def test_three_byte_tags_primitive_and_constructed() -> None:
    data = "DF812903010203" + "FF810509" + "DF8115020000" + "9F0200"
    assert emv.decode(data) == [
        ("DF8129", b"\x01\x02\x03"),
        ("FF8105", [("DF8115", b"\x00\x00"), ("9F02", b"")]),
    ]


def test_four_byte_tag_accepted() -> None:
    assert emv.decode("9F81810101AB") == [("9F818101", b"\xab")]


def test_padding_skipped_everywhere_but_ff_is_a_tag() -> None:
    data = "0000" + "9A03260315" + "00" + "7008" + "00" + "9C0100" + "00" + "5F2A00" + "0000"
    assert emv.decode(data) == [("9A", bytes.fromhex("260315")), ("70", [("9C", b"\x00"), ("5F2A", b"")])]
    assert emv.decode("00000000") == []
    assert emv.decode(b"") == []
    assert emv.decode("FF0100") == [("FF01", [])]


def test_repeated_tags_kept_in_order_and_zero_length() -> None:
    assert emv.decode("9F1801019F1800860186") == [
        ("9F18", b"\x01"),
        ("9F18", b""),
        ("86", b"\x86"),
    ]


def test_long_form_lengths_including_non_minimal() -> None:
    value = bytes(range(200))
    assert emv.decode(b"\x9f\x10\x81\xc8" + value) == [("9F10", value)]
    assert emv.decode("5A8102ABCD") == [("5A", b"\xab\xcd")]
    assert emv.decode("5A820002ABCD") == [("5A", b"\xab\xcd")]
    big = bytes(300)
    assert emv.decode(b"\x9f\x7c\x82\x01\x2c" + big) == [("9F7C", big)]


def nested(levels: int) -> bytes:
    data = b""
    for _ in range(levels):
        data = emv.encode([("70", emv.decode(data))]) if data else bytes.fromhex("7000")
    return data


def test_nesting_bound() -> None:
    ok = nested(emv.MAX_DEPTH)
    depth, node = 0, emv.decode(ok)
    while node:
        depth += 1
        node = node[0][1]  # type: ignore[assignment]  # walking a chain of templates
    assert depth == emv.MAX_DEPTH
    too_deep = b"\x70\x00"
    for _ in range(emv.MAX_DEPTH):
        too_deep = b"\x70" + bytes([len(too_deep)]) + too_deep
    with pytest.raises(TLVError) as info:
        emv.decode(too_deep)
    assert info.value.reason == "too_deep"
    assert info.value.offset == 2 * emv.MAX_DEPTH


@pytest.mark.parametrize(
    ("data", "reason", "offset"),
    [
        ("9F", "truncated_tag", 1),
        ("9A01009F", "truncated_tag", 4),
        ("DF81", "truncated_tag", 2),
        ("9F818181", "truncated_tag", 4),
        ("9F8181818101", "tag_too_long", 0),
        ("9A", "truncated_length", 1),
        ("9A81", "truncated_length", 1),
        ("9A8201", "truncated_length", 1),
        ("9A80", "indefinite_length", 1),
        ("9A830000", "overlong_length", 1),
        ("9A84000000", "overlong_length", 1),
        ("9AFF", "overlong_length", 1),
        ("9A0201", "value_overrun", 0),
        ("9C01009A8105AA", "value_overrun", 3),
        # The child claims 2 value bytes but its parent 70 holds only 3 bytes in all.
        ("70039A02260000", "value_overrun", 2),
        ("9A0", "odd_hex", 2),
        ("9A0G", "non_hex", 3),
        ("9A 1", "non_hex", 2),
        ("9A01é0", "non_hex", 4),
    ],
)
def test_every_error_reason_with_offset(data: str, reason: str, offset: int) -> None:
    with pytest.raises(TLVError) as info:
        emv.decode(data)
    assert isinstance(info.value, ValueError)
    assert info.value.reason == reason
    assert info.value.offset == offset
    assert f"at offset {offset}" in str(info.value)


def test_error_messages_never_carry_card_data() -> None:
    truncated = REQUEST_HEX[:-4]
    with pytest.raises(TLVError) as info:
        emv.decode(truncated)
    assert PAN not in str(info.value) and "4761" not in str(info.value)
    assert info.value.reason == "value_overrun"
    assert type(info.value).__module__ == "cloudlayer.emv"


def test_decode_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        emv.decode(123)  # type: ignore[arg-type]  # wrong on purpose


def test_encode_round_trips_and_is_minimal() -> None:
    assert emv.encode(REQUEST_DECODED) == bytes.fromhex(REQUEST_HEX)
    assert emv.encode(ISSUER_DECODED) == bytes.fromhex(ISSUER_HEX)
    assert emv.encode([("9F10", bytes(0x7F))])[:3] == bytes.fromhex("9F107F")
    assert emv.encode([("9F10", bytes(0x80))])[:4] == bytes.fromhex("9F108180")
    assert emv.encode([("9F10", bytes(0x100))])[:5] == bytes.fromhex("9F10820100")
    # A non-minimal length is accepted on decode and never written.
    assert emv.encode(emv.decode("5A8102ABCD")) == bytes.fromhex("5A02ABCD")
    assert emv.encode([("df8129", b"\x01"), ("70", ())]) == bytes.fromhex("DF812901017000")


@pytest.mark.parametrize(
    ("items", "error"),
    [
        ([("9F2", b"")], ValueError),
        ([("00", b"")], ValueError),
        ([("9F", b"")], ValueError),
        ([("5A01", b"")], ValueError),
        ([("DF81818101", b"")], ValueError),
        ([("70", b"\x9a\x00")], ValueError),
        ([("9A", [])], ValueError),
        ([("9A", "01")], TypeError),
        ([(0x9A, b"")], TypeError),
        ([["9A", b""]], TypeError),
        ([("9A", b"", b"")], TypeError),
        ([("9F7C", bytes(0x10000))], ValueError),
    ],
)
def test_encode_rejects_bad_items(items: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        emv.encode(items)  # type: ignore[arg-type]  # wrong on purpose


def test_encode_bounds_nesting_even_for_a_cyclic_list() -> None:
    cyclic: list[tuple[str, object]] = []
    cyclic.append(("70", cyclic))
    with pytest.raises(ValueError, match="nested"):
        emv.encode(cyclic)  # type: ignore[arg-type]  # deliberately cyclic


def test_redact_removes_track_data_and_masks_pan() -> None:
    redacted = emv.redact(REQUEST_HEX)
    decoded = dict(emv.decode(redacted))
    assert "57" not in decoded
    assert decoded["5A"].hex().upper() == "476173AAAAAA0119"  # type: ignore[union-attr]
    assert emv.masked_pan(redacted) == "476173******0119"
    assert decoded["9F26"] == bytes.fromhex("8E19ED4F2A1A4D2B")
    assert [t for t, _ in emv.decode(redacted)] == [t for t, _ in REQUEST_DECODED if t != "57"]
    assert bytes.fromhex(PAN) not in redacted and bytes.fromhex(TRACK2[:20]) not in redacted


def test_redact_recurses_into_templates_and_drops_every_sensitive_tag() -> None:
    inner = [
        ("5A", bytes.fromhex("5413330089010434")),
        ("5F20", b"CARDHOLDER/TEST"),
        ("9F0B", b"CARDHOLDER/TEST EXTENDED"),
        ("56", b"B5413330089010434^CARDHOLDER/TEST^2512"),
        ("9F1F", b"123456"),
        ("9F20", bytes.fromhex("1234")),
        ("99", bytes.fromhex("0412AC89ABCDEF67")),
        ("9F6B", bytes.fromhex("5413330089010434D2512201")),
        ("9F36", b"\x00\x01"),
    ]
    data = emv.encode([("77", inner), ("9F02", bytes(6))])
    assert emv.decode(emv.redact(data)) == [
        ("77", [("5A", bytes.fromhex("541333AAAAAA0434")), ("9F36", b"\x00\x01")]),
        ("9F02", bytes(6)),
    ]


def test_redact_with_chosen_tags_and_whole_templates() -> None:
    data = emv.encode(ISSUER_DECODED)
    assert emv.decode(emv.redact(data, tags={"71", "9f18"})) == [
        ISSUER_DECODED[0],
        ("72", [("86", bytes.fromhex("04DA9F580801020304A1B2C3D4"))]),
        ISSUER_DECODED[3],
    ]
    assert emv.redact(data, tags=[]) == data
    with pytest.raises(ValueError, match="invalid tag"):
        emv.redact(data, tags=["zz"])
    with pytest.raises(TLVError):
        emv.redact("9A05")


def test_masked_pan_and_odd_length_pan() -> None:
    assert emv.masked_pan(REQUEST_HEX) == "476173******0119"
    assert emv.masked_pan("5A08476173900101011F") == "476173*****1011"
    assert emv.redact("5A08476173900101011F").hex().upper() == "5A08476173AAAAA1011F"
    assert emv.masked_pan("5A06476173900101") == "************"
    assert emv.masked_pan("9A03260315") is None


def test_card_data_in_one_pass() -> None:
    card = emv.card_data(REQUEST_HEX)
    assert card is not None
    assert card.pan == PAN
    assert card.expiry == "271231"
    assert card.pan_sequence == "01"
    assert card.track2 == TRACK2
    assert card.masked_pan == "476173******0119"
    shown = repr(card)
    assert PAN not in shown and TRACK2 not in shown and "271231" not in shown
    assert "476173******0119" in shown


def test_card_data_inside_a_template_and_from_track2_only() -> None:
    card = emv.card_data(emv.encode([("70", [("57", bytes.fromhex("5413330089010434D2512201"))])]))
    assert card is not None
    assert (card.pan, card.track2, card.expiry, card.pan_sequence) == (
        "5413330089010434",
        "5413330089010434D2512201",
        None,
        None,
    )
    assert emv.card_data("9F02060000000010009A03260315") is None


@pytest.mark.parametrize("data", ["5A02AB12", "5F24022612", "5F3402000157", "5703123456", "57021D2D"])
def test_card_data_rejects_malformed_bcd_without_showing_it(data: str) -> None:
    with pytest.raises(TLVError) as info:
        emv.card_data(data)
    assert info.value.reason == "bad_card_data"
    assert data[4:] not in str(info.value)


def test_response_emv_puts_8a_first_and_keeps_the_issuer_objects() -> None:
    issuer_without_arc = bytes.fromhex(ISSUER_HEX[: -len("8A023030")])
    out = emv.build_response_emv("05", issuer_without_arc)
    assert out == bytes.fromhex("8A023035") + issuer_without_arc
    assert emv.decode(out)[0] == ("8A", b"05")
    # The issuer's own 8A wins (the ARPC in 91 is computed over it) and is moved to the front.
    out = emv.build_response_emv("05", ISSUER_HEX)
    assert [t for t, _ in emv.decode(out)] == ["8A", "91", "71", "72"]
    assert emv.decode(out)[0] == ("8A", b"00")
    assert emv.build_response_emv("00", b"") == bytes.fromhex("8A023030")


def test_response_emv_rejects_bad_input() -> None:
    with pytest.raises(TLVError):
        emv.build_response_emv("00", bytes.fromhex("910A3BA9"))
    for code in ("0", "000", "0 ", "é0"):
        with pytest.raises(ValueError, match="response code"):
            emv.build_response_emv(code, b"")


def test_tag_tables() -> None:
    for tag in ("9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "5F2A", "82", "9F1A", "9F03", "9F02"):
        assert tag in emv.TAGS
    for tag in ("9F33", "9F34", "9F35", "84", "9F09", "9F41", "9F1E", "8A", "91", "71", "72", "5A", "57", "5F24"):
        assert tag in emv.TAGS
    assert emv.TAGS["9F26"] == "Application Cryptogram"
    assert emv.tag_name("9f26") == "Application Cryptogram"
    assert emv.tag_name("DF7F") == "Unknown"
    assert all(t == t.upper() and len(t) % 2 == 0 for t in emv.TAGS)
    assert {"57", "56", "9F1F", "9F20", "99", "9F6B", "5A", "5F20", "9F0B"} == emv.SENSITIVE
    assert frozenset(_native.SENSITIVE_TAGS) == emv.SENSITIVE
