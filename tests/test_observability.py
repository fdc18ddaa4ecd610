"""Logs mask card data and drop secrets, disabled levels cost nothing, request ids, health bodies, /metrics."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import msgspec
import pytest
import structlog
import trio
from hypothesis import given
from hypothesis import strategies as st

from cloudlayer.config import LoggingConfig
from cloudlayer.observability import health, metrics
from cloudlayer.observability.logging import (
    _CREDENTIAL_HINT,
    _DIGIT_RUN,
    _HINT_WORDS,
    _may_hold_secret,
    bind_request_id,
    configure_logging,
    is_sensitive_key,
    luhn_valid,
    mask_pans,
    redact_credentials,
    request_id_from,
)

VISA = "4111111111111111"
MASTERCARD = "5555555555554444"


def _luhn_complete(prefix: str) -> str:
    return next(prefix + d for d in "0123456789" if luhn_valid(prefix + d))


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Logging configured as `serve` does (JSON), written into a buffer; global state restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging(LoggingConfig(level="INFO", format="json"), stream=buffer)
    yield buffer
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers, root.level = saved_handlers, saved_level


def _lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_luhn_and_masking_rules() -> None:
    assert luhn_valid(VISA) and luhn_valid(MASTERCARD)
    assert not luhn_valid("4111111111111112")
    assert mask_pans(f"card {VISA} ok") == "card 411111******1111 ok"
    pan19 = _luhn_complete("601100099013942400")
    assert mask_pans(pan19) == pan19[:6] + "*" * 9 + pan19[-4:]
    # No Luhn-valid 13-19 digit window that starts like a card number (2-6): the number stays readable.
    assert mask_pans("order 4111111111111112") == "order 4111111111111112"
    assert mask_pans("id 9876543210987654") == "id 9876543210987654"
    # Short digit runs (STAN, RRN, amounts) are never touched.
    assert mask_pans("stan 000123 rrn 612345678901") == "stan 000123 rrn 612345678901"


def test_pan_glued_inside_hex_emv_data_is_masked() -> None:
    emv = f"9F0206000000001000 5A08{VISA}5F3401009F2701"  # tag 5A (PAN) in the middle of hex
    masked = mask_pans(emv.replace(" ", ""))
    assert VISA not in masked
    assert "411111******1111" in masked


def test_sensitive_key_names() -> None:
    for key in ("pan", "PAN", "track2", "track_2_data", "pin_block", "pinBlock", "client_secret", "access_token"):
        assert is_sensitive_key(key), key
    for key in ("password", "Authorization", "private_key", "cvv"):
        assert is_sensitive_key(key), key
    for key in ("company", "span", "expand", "transactionId", "masked_pan", "stan", "rrn", "response_code"):
        assert not is_sensitive_key(key), key


def test_structlog_events_are_masked_and_secrets_dropped(log_output: io.StringIO) -> None:
    log = structlog.get_logger("test")
    log.info(
        f"declined card {VISA}",
        client_secret="s3cr3t-value",
        pin_block="0412AC89ABCDEF01",
        track2=f"{VISA}D2512201",
        masked_pan="411111******1111",
        note=f"retry of {MASTERCARD}",
        nested={"pan": VISA, "items": [f"x{MASTERCARD}x"]},
        stan="000123",
    )
    text = log_output.getvalue()
    for secret in (VISA, MASTERCARD, "s3cr3t-value", "0412AC89ABCDEF01", "D2512201"):
        assert secret not in text
    (line,) = _lines(log_output)
    assert line["event"] == "declined card 411111******1111"
    assert line["note"] == "retry of 555555******4444"
    assert line["masked_pan"] == "411111******1111"
    assert line["nested"] == {"items": ["x555555******4444x"]}
    assert line["stan"] == "000123" and line["level"] == "info" and "timestamp" in line
    assert not {"client_secret", "pin_block", "track2"} & line.keys()


def test_stdlib_records_and_tracebacks_go_through_the_same_masking(log_output: io.StringIO) -> None:
    logging.getLogger("hypercorn.error").error("connection from card %s", VISA)
    try:
        raise ValueError(f"bad card {VISA}")
    except ValueError:
        structlog.get_logger("test").exception("failed")
    text = log_output.getvalue()
    assert VISA not in text
    first, second = _lines(log_output)
    assert first["event"] == "connection from card 411111******1111"
    assert first["logger"] == "hypercorn.error"
    assert "ValueError: bad card 411111******1111" in str(second["exception"])


def test_credentials_in_text_are_redacted() -> None:
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjbCJ9.c2lnbmF0dXJl"
    cases = {
        f"Authorization: Bearer {jwt} next": "Authorization: [REDACTED] next",
        "(b'authorization', b'Basic Y2xpZW50OnMzY3IzdA==')": "(b'authorization', b'[REDACTED]')",
        "grant_type=client_credentials&client_secret=s3cr3t-v&scope=x": (
            "grant_type=client_credentials&client_secret=[REDACTED]&scope=x"
        ),
        f'{{"access_token": "{jwt}", "token_type": "Bearer"}}': (
            '{"access_token": "[REDACTED]", "token_type": "Bearer"}'
        ),
        f"proxy-authorization=Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnagMDAuBgkqhkiC9xIBAgIG {jwt}": (
            "proxy-authorization=[REDACTED] [REDACTED]"
        ),
        f"token was {jwt} then": "token was [REDACTED] then",
    }
    for text, redacted in cases.items():
        assert redact_credentials(text) == redacted, text
    for prose in ("basic auth failed", "Authorization header missing", "token_type Bearer", "no secret here"):
        assert redact_credentials(prose) == prose


def test_fast_precheck_has_the_hint_regex_words() -> None:
    # _may_hold_secret stands in front of _CREDENTIAL_HINT: the same words, lowered (the regex is case-insensitive).
    pattern_words = _CREDENTIAL_HINT.pattern.removeprefix("(?i)").split("|")
    assert sorted(w.lower() for w in pattern_words) == sorted(_HINT_WORDS)
    for word in _HINT_WORDS:  # and its unrolled test has every one of them
        assert _may_hold_secret(f"x {word.upper()} y") and _may_hold_secret(f"x{word}y")


_TEXT = st.text(alphabet=st.sampled_from("0123456789aAbBeEjJyYrRtTkKsSoOnN:= ._-"), max_size=60) | st.sampled_from(
    ["x" * 5 + "4111111111111111", "Bearer abcdefgh", "AUTHORIZATION: x", "eYj0.a.b", "client_SECRET=1", "tOkEn"]
)


@given(text=_TEXT)
def test_fast_precheck_never_skips_what_the_regexes_would_redact(text: str) -> None:
    if _DIGIT_RUN.search(text) is not None or _CREDENTIAL_HINT.search(text) is not None:
        assert _may_hold_secret(text), text


@pytest.fixture
def debug_log_output() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging(LoggingConfig(level="DEBUG", format="json"), stream=buffer)
    yield buffer
    structlog.reset_defaults()
    root.handlers, root.level = saved_handlers, saved_level


def test_at_debug_libraries_stay_at_info_and_are_redacted(debug_log_output: io.StringIO) -> None:
    """h2's hpack logs every decoded header at DEBUG, Authorization included: capped, whatever our level."""
    hpack = logging.getLogger("hpack.hpack")
    hpack.debug("Decoded %s", (b"authorization", b"Basic Y2xpZW50OnMzY3IzdA=="))
    noisy = logging.getLogger("some.library")
    noisy.setLevel(logging.DEBUG)  # a library that turns itself up is still capped by our handler
    noisy.debug("header authorization: Bearer abcdefgh12345678")
    noisy.warning("refused client_secret=s3cr3t-v")
    structlog.get_logger("test").debug("our_detail", step="claim")
    noisy.setLevel(logging.NOTSET)
    text = debug_log_output.getvalue()
    assert "Y2xpZW50OnMzY3IzdA" not in text and "abcdefgh12345678" not in text and "s3cr3t-v" not in text
    first, second = _lines(debug_log_output)
    assert first["event"] == "refused client_secret=[REDACTED]" and first["level"] == "warning"
    assert second["event"] == "our_detail" and second["level"] == "debug"  # our own DEBUG still shows


def test_disabled_levels_format_nothing(log_output: io.StringIO) -> None:
    class Expensive:
        rendered = 0

        def __repr__(self) -> str:
            Expensive.rendered += 1
            return "expensive"

        __str__ = __repr__

    structlog.get_logger("test").debug("detail", value=Expensive())
    logging.getLogger("cloudlayer.test").debug("detail %s", Expensive())
    assert Expensive.rendered == 0
    assert log_output.getvalue() == ""
    structlog.get_logger("test").info("shown", value=Expensive())
    assert Expensive.rendered == 1


def test_request_id_from_header_or_generated(log_output: io.StringIO) -> None:
    assert request_id_from("mpp-2024.11_abc-DEF") == "mpp-2024.11_abc-DEF"
    for bad in (None, "", "x" * 65, "has space", 'quote"', "new\nline", "ünïcode"):
        generated = request_id_from(bad)
        assert generated != bad and len(generated) == 32 and generated.isalnum()
    assert request_id_from("a" * 64) == "a" * 64
    assert request_id_from(None) != request_id_from(None)

    assert bind_request_id("req-1") == "req-1"
    structlog.get_logger("test").info("first")
    bind_request_id(None)
    structlog.get_logger("test").info("second")
    first, second = _lines(log_output)
    assert first["request_id"] == "req-1"
    assert second["request_id"] != "req-1"


def test_health_bodies() -> None:
    assert health.liveness() == (200, b'{"status":"ok"}')
    status, body = health.readiness(health.Readiness(store_writable=True, acquirer_link_up=True))
    assert status == 200 and msgspec.json.decode(body)["status"] == "ready"
    status, body = health.readiness(health.Readiness(store_writable=True, acquirer_link_up=False))
    assert status == 503
    assert msgspec.json.decode(body) == {"status": "not_ready", "checks": {"store": "ok", "acquirer": "down"}}
    status, body = health.readiness(health.Readiness(store_writable=False, acquirer_link_up=True))
    assert status == 503 and msgspec.json.decode(body)["checks"]["store"] == "not_writable"


async def test_metrics_endpoint_serves_what_was_counted() -> None:
    before = metrics.REPLAYS._value.get()
    metrics.REPLAYS.inc()
    metrics.observe_request("/transaction/process", 200, "approved", 0.012)
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(metrics.serve_metrics, "127.0.0.1:0")
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url + "/metrics")
            missing = await client.get(url + "/")
        nursery.cancel_scope.cancel()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert f"cloudlayer_replays_total {before + 1}" in response.text
    assert (
        'cloudlayer_http_requests_total{outcome="approved",route="/transaction/process",status="200"}' in response.text
    )
    assert 'cloudlayer_http_request_duration_seconds_bucket{le="0.025",route="/transaction/process"}' in response.text
    assert missing.status_code == 404
