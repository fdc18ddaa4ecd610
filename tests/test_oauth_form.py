"""The token endpoint's form parser is parse_qsl exactly (its fast path skips only unquoting nothing)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from hypothesis import example, given
from hypothesis import strategies as st

from cloudlayer.oauth.token_endpoint import MAX_PARAMETERS, form_pairs

# Characters that matter to form parsing, plus a few ordinary and non-ASCII ones.
_FORM_CHARS = st.sampled_from([*"&=%+;ab_-.~ 0Z9é", "%2", "%41", "%zz", "%C3%A9", "%ff", "&&", "=="])
_BODIES = st.lists(_FORM_CHARS, max_size=80).map("".join)


def _reference(text: str) -> list[tuple[str, str]] | str:
    try:
        return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PARAMETERS, errors="strict")
    except (UnicodeDecodeError, ValueError) as e:
        return type(e).__name__


def _ours(text: str) -> list[tuple[str, str]] | str:
    try:
        return form_pairs(text)
    except (UnicodeDecodeError, ValueError) as e:
        return type(e).__name__


@given(_BODIES)
@example("grant_type=client_credentials&client_id=cl_0123&client_secret=clsec_abc-_x")
@example("a&b=&=c&&d==e&")
@example("&" * (MAX_PARAMETERS - 1))
@example("&" * MAX_PARAMETERS)
@example("a=%")
@example("a=%ff")
def test_form_pairs_is_parse_qsl(text: str) -> None:
    assert _ours(text) == _reference(text)


def test_fast_path_refuses_too_many_fields_like_parse_qsl() -> None:
    text = "&".join(f"p{i}=v" for i in range(MAX_PARAMETERS + 1))
    assert _ours(text) == _reference(text) == "ValueError"
