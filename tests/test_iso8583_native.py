"""The native ISO 8583 codec (codec.py, rust/iso8583.rs) against its oracle, pyiso8583 (reference_codec.py).

Encode: on every message the dialect's table allows (strategies built from spec.py's own bounds, every
field's maximum length included), and on values it does not allow, both give the same bytes or the same
error (field and wording). Decode: the native codec accepts a payload exactly when pyiso8583 decodes it
*and* would encode it back to the same bytes (the canonical frame), and then returns the same dict; every
payload pyiso8583 refuses, the native codec refuses too, with a FrameError (never a panic). The fuzz corpus
and regressions are replayed here so a crasher once found stays a test without nightly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cloudlayer._native import Iso8583DecodeError, Iso8583Dialect
from cloudlayer.acquirer import codec
from cloudlayer.acquirer import reference_codec as ref
from cloudlayer.acquirer.codec import EncodeError, FrameError, Message
from cloudlayer.acquirer.spec import SPEC

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
FIELDS = sorted(int(k) for k in SPEC if k.isdigit() and k != "1")
HEX = "0123456789abcdefABCDEF"
ASCII = st.characters(max_codepoint=0x7F)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(fn: Any, arg: Any) -> tuple[str, Any]:
    """('ok', value) or ('error', (type, str, field)) - comparable across the two codecs."""
    try:
        return "ok", fn(arg)
    except EncodeError as e:
        return "error", ("EncodeError", str(e), e.field)
    except FrameError:
        return "error", ("FrameError", None, None)


def assert_same_encode(message: Message) -> None:
    assert outcome(codec.encode, message) == outcome(ref.encode, message)


def assert_decode_agrees(payload: bytes) -> None:
    """Native accepts exactly the canonical frames the oracle decodes, with the same dict."""
    native, oracle = outcome(codec.decode, payload), outcome(ref.decode, payload)
    canonical = oracle[0] == "ok" and outcome(ref.encode, oracle[1]) == ("ok", payload)
    if canonical:
        assert native == oracle
    else:
        assert native[0] == "error", "the native codec accepted a frame the oracle refuses or cannot re-encode"


# --- strategies from the spec's own bounds ----------------------------------------------------------------


def field_value(key: str, at_max: bool = False) -> st.SearchStrategy[str]:
    spec = SPEC[key]
    n = spec["max_len"]
    sizes = st.just(n) if at_max or spec["len_type"] == 0 else st.one_of(st.just(n), st.integers(0, n))
    if spec["data_enc"] == "b":
        return sizes.flatmap(lambda k: st.text(HEX, min_size=2 * k, max_size=2 * k))
    return sizes.flatmap(lambda k: st.text(ASCII, min_size=k, max_size=k))


MTI = st.text("0123456789", min_size=4, max_size=4)


@st.composite
def messages(draw: st.DrawFn, mti: st.SearchStrategy[str] = MTI) -> Message:
    keys = draw(st.lists(st.sampled_from([str(f) for f in FIELDS]), unique=True, max_size=len(FIELDS)))
    return {"t": draw(mti)} | {k: draw(field_value(k)) for k in keys}


def test_the_dialect_is_built_from_spec_py() -> None:
    """One source of truth: the table is read from the SPEC it is given, not written twice."""
    narrower = {k: dict(v) for k, v in SPEC.items()} | {"2": dict(SPEC["2"], max_len=10)}
    dialect = Iso8583Dialect(narrower)
    assert dialect.decode(dialect.encode({"t": "0200", "2": "4" * 10}))["2"] == "4" * 10
    with pytest.raises(ValueError, match="larger than maximum 10"):
        dialect.encode({"t": "0200", "2": "4" * 11})
    assert codec.encode({"t": "0200", "2": "4" * 11}) == ref.encode({"t": "0200", "2": "4" * 11})


def test_the_fuzz_targets_table_is_spec_py() -> None:
    """fuzz/iso8583_dialect.txt is spec.py's table written out for the Rust fuzz target."""
    rows = [line.split() for line in (FUZZ / "iso8583_dialect.txt").read_text().splitlines()]
    table = {r[0]: (r[1], int(r[2]), int(r[3])) for r in rows if r and not r[0].startswith("#")}
    want = {str(f): (SPEC[str(f)]["data_enc"], SPEC[str(f)]["len_type"], SPEC[str(f)]["max_len"]) for f in FIELDS}
    assert table == want


@pytest.mark.parametrize(
    "change",
    [
        {"2": dict(SPEC["2"], len_enc="bcd")},
        {"2": dict(SPEC["2"], len_count="nibbles")},
        {"2": dict(SPEC["2"], data_enc="cp500")},
        {"2": dict(SPEC["2"], len_type=4)},
        {"2": dict(SPEC["2"], max_len=100)},
        {"h": dict(SPEC["h"], max_len=4)},
        {"p": dict(SPEC["p"], data_enc="ascii", max_len=16)},
        {"65": dict(SPEC["3"])},
        {"129": dict(SPEC["3"])},
        {"03": dict(SPEC["3"])},
        {"3": {"data_enc": "ascii"}},
    ],
)
def test_a_table_the_codec_cannot_honour_is_refused_up_front(change: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        Iso8583Dialect(dict(SPEC) | change)


# --- encode: the same bytes, the same errors --------------------------------------------------------------


@SETTINGS
@given(messages())
def test_every_message_of_the_dialect_encodes_to_the_oracles_bytes_and_back(message: Message) -> None:
    packed = codec.encode(message)
    assert packed == ref.encode(message)
    expected = {k: v.upper() if SPEC[k]["data_enc"] == "b" else v for k, v in message.items()}
    assert codec.decode(packed) == ref.decode(packed) == expected


@pytest.mark.parametrize("key", [str(f) for f in FIELDS])
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_each_field_at_its_maximum_and_one_past_it(key: str, data: st.DataObject) -> None:
    value = data.draw(field_value(key, at_max=True))
    message = {"t": "0200", key: value}
    assert codec.decode(codec.encode(message)) == ref.decode(ref.encode(message))
    unit = 2 if SPEC[key]["data_enc"] == "b" else 1
    for bad in (value + "0" * unit, value[:-unit]):
        if SPEC[key]["len_type"] and len(bad) < len(value):
            continue  # shorter is fine for a variable field (checked by the property above)
        with pytest.raises(EncodeError) as native:
            codec.encode({"t": "0200", key: bad})
        with pytest.raises(EncodeError) as oracle:
            ref.encode({"t": "0200", key: bad})
        assert (str(native.value), native.value.field) == (str(oracle.value), oracle.value.field)


# Any str, lone surrogates included (text() never draws them; Python strs can hold them).
ANY_TEXT = st.one_of(
    st.text(max_size=50),
    st.lists(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=20).map("".join),
)


@SETTINGS
@given(messages(mti=st.one_of(MTI, ANY_TEXT)), st.dictionaries(st.sampled_from([str(f) for f in FIELDS]), ANY_TEXT))
@example({"t": "0200"}, {"52": "é0112233445566ff"})
@example({"t": "0200"}, {"55": "\udc80" * 3})
@example({"t": "0200"}, {"55": "\udc80" * 4})
@example({"t": "020\udc80"}, {})
def test_values_the_dialect_cannot_carry_give_the_oracles_error(message: Message, wrong: Message) -> None:
    assert_same_encode(message | wrong)


@SETTINGS
@given(
    messages(),
    st.dictionaries(st.sampled_from([str(f) for f in FIELDS]), st.text(ASCII, max_size=4).map(lambda s: s + "1")),
)
def test_non_digits_and_wrong_lengths_in_numeric_fields(message: Message, wrong: Message) -> None:
    """The table's fields are ASCII text: neither codec checks digits (messages.py builds them). What they do
    check, length and ASCII, they check alike."""
    assert_same_encode(message | wrong)


def test_a_missing_mti_and_keys_outside_the_dialect_are_refused() -> None:
    assert_same_encode({"3": "000000"})
    for key in ("99", "1", "65", "130"):
        with pytest.raises(EncodeError) as e:
            codec.encode({"t": "0200", key: "x"})
        assert e.value.field == key
    # Keys pyiso8583 silently drops (or overwrites) are refused natively: a typo must not vanish from a message.
    for key in ("p", "h", "03", "foo", "٣"):
        with pytest.raises(EncodeError):
            codec.encode({"t": "0200", key: "000000"})
    for value in (None, 42, b"00", ["0"]):
        with pytest.raises(EncodeError, match="invalid data"):
            codec.encode({"t": "0200", "3": value})  # type: ignore[dict-item]


def test_wrong_types_raise_type_errors_not_panics() -> None:
    for bad in (None, [("t", "0200")], "0200"):
        with pytest.raises(TypeError):
            codec.encode(bad)  # type: ignore[arg-type]
    for payload in ("0800", None, 7, memoryview(b"0800")):
        with pytest.raises(TypeError):
            codec.DIALECT.decode(payload)  # type: ignore[arg-type]
    assert codec.DIALECT.decode(bytearray(codec.encode({"t": "0800", "70": "301"}))) == {"t": "0800", "70": "301"}


# --- decode: canonical frames only, every refusal the oracle makes ---------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_every_truncation_of_a_valid_frame_is_refused_by_both(message: Message) -> None:
    frame = codec.encode(message)
    for cut in range(len(frame)):
        with pytest.raises(FrameError):
            codec.decode(frame[:cut])
        with pytest.raises(FrameError):
            ref.decode(frame[:cut])
    assert_decode_agrees(frame + b"0")


@SETTINGS
@given(st.binary(max_size=200))
@example(b"")
@example(b"0800" + bytes(8))
def test_garbage_frames(payload: bytes) -> None:
    assert_decode_agrees(payload)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with a few bytes changed, inserted or removed, or bitmap bits flipped."""
    frame = bytearray(codec.encode(draw(messages())))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "bit", "digit"]))
        at = draw(st.integers(0, max(len(frame) - 1, 0)))
        if kind == "set" and frame:
            frame[at] = draw(st.sampled_from([0x00, 0x20, 0x2B, 0x2D, 0x30, 0x39, 0x5F, 0x7F, 0x80, 0xFF]))
        elif kind == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif kind == "delete" and frame:
            del frame[at]
        elif kind == "bit" and len(frame) >= 12:
            bit = draw(st.integers(0, 127 if frame[4] & 0x80 and len(frame) >= 20 else 63))
            frame[4 + bit // 8] ^= 0x80 >> (bit % 8)
        elif kind == "digit" and frame:
            frame[at] = draw(st.sampled_from(b" +-_\t"))  # what Python's int() lets through in a length
    return bytes(frame)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_mutated_frames(payload: bytes) -> None:
    assert_decode_agrees(payload)


def test_the_frames_pyiso8583_reads_loosely_are_refused() -> None:
    """The deliberate differences (reference_codec.py's docstring): each decodes in pyiso8583, none is
    canonical, the native codec refuses each."""
    names = ["bit65_tertiary_empty", "secondary_empty", "length_plus_sign", "length_space", "lll_underscore"]
    for name in names:
        payload = (FUZZ / "regressions" / "iso8583" / name).read_bytes()
        doc = ref.decode(payload)
        assert ref.encode(doc) != payload
        with pytest.raises(FrameError):
            codec.decode(payload)


def test_decode_errors_say_where_and_never_what() -> None:
    frame = codec.encode({"t": "0200", "2": "4761739001010119", "4": "000000001000"})
    with pytest.raises(Iso8583DecodeError) as e:
        codec.DIALECT.decode(frame[:-3])
    assert (e.value.field, e.value.reason) == ("4", "truncated")
    with pytest.raises(FrameError) as f:
        codec.decode(frame[:-3])
    assert "4761" not in str(f.value) and "0000" not in str(f.value)
    assert f.value.frame_length == len(frame) - 3


def _fuzz_inputs() -> list[Path]:
    dirs = [FUZZ / "corpus" / "iso8583", FUZZ / "regressions" / "iso8583"]
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file())


@pytest.mark.parametrize("path", _fuzz_inputs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_corpus_and_regressions_replay(path: Path) -> None:
    payload = path.read_bytes()
    assert_decode_agrees(payload)
    if path.parent.name == "corpus":
        assert codec.encode(codec.decode(payload)) == payload


# --- no panic reachable from Python: whatever it is handed, a Python exception or a result ----------------

ANY_VALUE = st.one_of(ANY_TEXT, st.integers(), st.binary(max_size=8), st.none(), st.floats(), st.lists(st.text()))


@SETTINGS
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(["t", "p", "1", "h", "65", *map(str, FIELDS)]), ANY_TEXT, st.integers()),
        ANY_VALUE,
        max_size=12,
    )
)
def test_any_dict_encodes_or_raises_encode_error(message: dict[Any, Any]) -> None:
    try:
        codec.encode(message)
    except EncodeError as e:
        assert isinstance(e.field, str)


SPEC_VALUE = st.one_of(
    st.sampled_from(["ascii", "b", "bcd", "cp500", "bytes", "nibbles", ""]), st.integers(-2, 1200), st.none()
)


@SETTINGS
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(["t", "p", "1", "h", "65", "0", "129", *map(str, FIELDS)]), ANY_TEXT),
        st.one_of(
            st.dictionaries(
                st.sampled_from(["data_enc", "len_enc", "len_type", "max_len", "len_count", "desc"]), SPEC_VALUE
            ),
            ANY_VALUE,
        ),
        max_size=8,
    )
)
def test_any_spec_builds_a_dialect_or_raises(changes: dict[str, Any]) -> None:
    try:
        dialect = Iso8583Dialect(dict(SPEC) | changes)
    except (ValueError, TypeError):
        return
    for payload in _fuzz_inputs():
        try:
            dialect.decode(payload.read_bytes())
        except Iso8583DecodeError:
            pass
