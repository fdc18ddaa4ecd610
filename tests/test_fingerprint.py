"""cloudlayer.emv.fingerprint: checked against an independent Python model of the canonical encoding,
order independence, sensitivity to every change, and unambiguity."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudlayer import emv

DOMAIN = b"cloudlayer/request-fingerprint/v1\0"


def model(fields: list[tuple[str, emv.FieldValue]]) -> bytes:
    """The documented encoding, written again in Python: sort by name, length-prefix, type-tag."""
    h = hashlib.sha256(DOMAIN + struct.pack(">Q", len(fields)))
    for name, value in sorted(fields, key=lambda f: f[0].encode()):
        raw = name.encode()
        h.update(struct.pack(">Q", len(raw)) + raw)
        if value is None:
            h.update(b"N")
        elif isinstance(value, bool):
            h.update(b"T" if value else b"F")
        elif isinstance(value, int):
            h.update(b"I" + value.to_bytes(16, "big", signed=True))
        elif isinstance(value, str):
            data = value.encode()
            h.update(b"S" + struct.pack(">Q", len(data)) + data)
        else:
            h.update(b"B" + struct.pack(">Q", len(value)) + value)
    return h.digest()


REQUEST: list[tuple[str, emv.FieldValue]] = [
    ("transactionId", "7c1f4a36-9d9e-4f0b-9a55-0c3b7f1d2e4a"),
    ("transactionType", "PURCHASE"),
    ("amount", 1000),
    ("currency", "826"),
    ("merchantId", "MERCHANT0000001"),
    ("terminalId", "TERM0001"),
    ("posEntryMode", "072"),
    ("localDateTime", "2026-03-15T12:34:56"),
    ("emvData", bytes.fromhex("9F02060000000010005A084761739001010119")),
    ("pinBlock", None),
    ("originalTransactionId", None),
]


def test_matches_the_documented_encoding() -> None:
    digest = emv.fingerprint(REQUEST)
    assert len(digest) == 32
    assert digest == model(REQUEST)
    assert emv.fingerprint([]) == model([])


def test_order_does_not_matter() -> None:
    assert emv.fingerprint(list(reversed(REQUEST))) == emv.fingerprint(REQUEST)
    assert emv.fingerprint(tuple(REQUEST)) == emv.fingerprint(REQUEST)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("amount", 1001),
        ("amount", "1000"),
        ("currency", "978"),
        ("transactionType", "REFUND"),
        ("transactionId", "7c1f4a36-9d9e-4f0b-9a55-0c3b7f1d2e4b"),
        ("emvData", bytes.fromhex("9F02060000000010005A084761739001010118")),
        ("emvData", "9F02060000000010005A084761739001010119"),
        ("pinBlock", ""),
        ("pinBlock", b""),
        ("originalTransactionId", False),
    ],
)
def test_any_change_changes_it(name: str, value: emv.FieldValue) -> None:
    changed = [(n, value if n == name else v) for n, v in REQUEST]
    assert emv.fingerprint(changed) != emv.fingerprint(REQUEST)


def test_unambiguous_boundaries_and_types() -> None:
    digests = [
        emv.fingerprint(fields)
        for fields in (
            [("a", "bc")],
            [("ab", "c")],
            [("a", None)],
            [("a", "")],
            [("a", b"")],
            [("a", 1)],
            [("a", "1")],
            [("a", b"1")],
            [("a", True)],
            [("a", 0)],
            [("a", False)],
            [("a", "b"), ("c", None)],
            [("a", "b")],
            [],
        )
    ]
    assert len(set(digests)) == len(digests)


def test_big_and_negative_ints() -> None:
    for value in (-1, 2**63, -(2**127)):
        assert emv.fingerprint([("amount", value)]) == model([("amount", value)])
    with pytest.raises(OverflowError):
        emv.fingerprint([("amount", 2**127)])


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ([("a", 1), ("a", 2)], ValueError),
        ([("a", 1.5)], TypeError),
        ([("a", bytearray(b"x"))], TypeError),
        ([(1, "x")], TypeError),
        ([("a", "b", "c")], TypeError),
        (["ab"], TypeError),
    ],
)
def test_rejects_bad_fields(fields: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        emv.fingerprint(fields)  # type: ignore[arg-type]  # wrong on purpose


field_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**100), 2**100), st.text(max_size=20), st.binary(max_size=20)
)
field_sets = st.dictionaries(st.text(max_size=12), field_values, max_size=12)


@settings(max_examples=200, deadline=None)
@given(field_sets, st.randoms(use_true_random=False))
def test_property_order_independent_and_equal_to_model(fields: dict[str, emv.FieldValue], rnd: object) -> None:
    items = list(fields.items())
    shuffled = items[:]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]  # hypothesis' Random
    assert emv.fingerprint(shuffled) == emv.fingerprint(items) == model(items)


@settings(max_examples=200, deadline=None)
@given(field_sets, st.text(max_size=12), field_values)
def test_property_sensitive_to_any_field_change(
    fields: dict[str, emv.FieldValue], name: str, value: emv.FieldValue
) -> None:
    changed = dict(fields)
    changed[name] = value
    before, after = list(fields.items()), list(changed.items())
    same = name in fields and type(fields[name]) is type(value) and fields[name] == value
    assert (emv.fingerprint(before) == emv.fingerprint(after)) == same
