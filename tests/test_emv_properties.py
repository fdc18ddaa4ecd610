"""Property tests for the native EMV code: no input crashes it, encode/decode round-trip, redaction
always leaves valid TLV without the sensitive tags. Also replays every fuzz corpus/crash input."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudlayer import emv
from cloudlayer.emv import TLVError

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"


def exercise(data: bytes | str) -> None:
    """Every entry point either succeeds or raises TLVError; nothing else."""
    for fn in (emv.decode, emv.redact, emv.masked_pan, emv.card_data, lambda d: emv.build_response_emv("00", d)):
        try:
            fn(data)
        except TLVError as e:
            assert e.offset >= 0 and e.reason


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    exercise(data)


TLV_BYTE = st.sampled_from([0x00, 0x01, 0x1F, 0x20, 0x3F, 0x5F, 0x70, 0x7F, 0x80, 0x81, 0x82, 0x83, 0x9F, 0xDF, 0xFF])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(TLV_BYTE, st.integers(0, 255)), max_size=200).map(bytes))
def test_tlv_shaped_bytes_never_crash(data: bytes) -> None:
    exercise(data)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789abcdefABCDEF g\u00e9", max_size=80))
def test_random_hex_strings_never_crash(text: str) -> None:
    exercise(text)


def tag(constructed: bool) -> st.SearchStrategy[str]:
    """Well-formed 1-3 byte tags of the given kind."""
    cls = st.sampled_from([0x00, 0x40, 0x80, 0xC0]).map(lambda c: c | (0x20 if constructed else 0))
    one = st.tuples(cls, st.integers(1, 0x1E)).map(lambda t: f"{t[0] | t[1]:02X}")
    two = st.tuples(cls, st.integers(0, 0x7F)).map(lambda t: f"{t[0] | 0x1F:02X}{t[1]:02X}")
    three = st.tuples(cls, st.integers(0x80, 0xFF), st.integers(0, 0x7F)).map(
        lambda t: f"{t[0] | 0x1F:02X}{t[1]:02X}{t[2]:02X}"
    )
    return st.one_of(one, two, three)


primitive = st.tuples(tag(False), st.binary(max_size=300))
trees = st.recursive(
    st.lists(primitive, max_size=4),
    lambda children: st.lists(st.one_of(primitive, st.tuples(tag(True), children)), max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(trees)
def test_encode_decode_round_trip(items: list[tuple[str, emv.TLVValue]]) -> None:
    encoded = emv.encode(items)
    assert emv.decode(encoded) == items
    assert emv.decode(encoded.hex()) == items
    assert emv.encode(emv.decode(encoded)) == encoded


def all_tags(items: list[tuple[str, emv.TLVValue]]) -> set[str]:
    out: set[str] = set()
    for t, v in items:
        out.add(t)
        if isinstance(v, list):
            out |= all_tags(v)
    return out


SENSITIVE_PRIMITIVE = st.tuples(st.sampled_from(sorted(emv.SENSITIVE - {"5A"})), st.binary(max_size=40))


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.lists(st.one_of(primitive, SENSITIVE_PRIMITIVE), max_size=4),
        lambda c: st.lists(st.one_of(primitive, SENSITIVE_PRIMITIVE, st.tuples(tag(True), c)), max_size=4),
        max_leaves=12,
    )
)
def test_redaction_leaves_valid_tlv_without_sensitive_tags(items: list[tuple[str, emv.TLVValue]]) -> None:
    redacted = emv.decode(emv.redact(emv.encode(items)))
    assert not (all_tags(redacted) & (emv.SENSITIVE - {"5A"}))
    assert all_tags(redacted) <= all_tags(items)


def corpus_files() -> list[Path]:
    dirs = [FUZZ / "corpus" / "tlv", FUZZ / "regressions"]
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file())


def test_fuzz_corpus_is_committed() -> None:
    assert len(corpus_files()) >= 5


def test_fuzz_corpus_and_crashers_replay_cleanly() -> None:
    for path in corpus_files():
        exercise(path.read_bytes())
