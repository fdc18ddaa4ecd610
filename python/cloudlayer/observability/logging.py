"""Structured logs: structlog JSON lines (or a console view for dev), stdlib logging routed through the same chain.

Every event passes `redact_card_data` last before rendering: PAN-like digit runs are masked 6+4, keys that
name secrets or card data are dropped, and credentials inside text (an `Authorization` header's value, Bearer
and Basic credentials, `client_secret=...`, JWTs) are replaced by `[REDACTED]`. The code must never log such
data in the first place; this is the net under it.

`logging.level` is CloudLayer's own level. Libraries log through the stdlib (our events are structlog's), and
some of them write request data at DEBUG: h2's `hpack` logs every decoded header, Authorization included. So
stdlib records are capped at INFO whatever our level (`LIBRARY_MIN_LEVEL`), and the ones that do pass go
through the same redaction. Disabled levels cost nothing: structlog's filtering logger turns them into no-ops before any
processor or formatting runs, and stdlib loggers check their level first.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import secrets
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import msgspec
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ..config import LoggingConfig

MASK = "*"

# A run of 13+ digits; a PAN hides in it whole (13-19 digits) or inside a longer run (e.g. hex EMV data).
_DIGIT_RUN = re.compile(r"\d{13,}")
# Key words that mark a value as card data or a secret. Keys are split into words (snake, kebab, camel case)
# so that "pan" drops `pan` and `masked_pan` but not `company`.
_SENSITIVE_WORDS = frozenset(
    {
        "pan",
        "track",
        "track1",
        "track2",
        "pin",
        "pinblock",
        "cvv",
        "cvc",
        "cvv2",
        "secret",
        "token",
        "password",
        "passwd",
        "authorization",
        "cookie",
        "pepper",
        "privatekey",
    }
)
_KEY_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_DEPTH = 4
REDACTED = "[REDACTED]"
# Libraries (hpack, h2, h11, hypercorn, httpx, ...) never log below this, whatever logging.level says.
LIBRARY_MIN_LEVEL = logging.INFO
# Credentials inside free text, e.g. hpack's `(b'authorization', b'Basic ...')`, a header line `Authorization:
# Bearer ...`, a form body `client_secret=...`, a JSON `"access_token": "..."`, or a bare compact JWS/JWE.
_CREDENTIALS = re.compile(
    r"""(?ix)
    (?P<header>(?:proxy-)?authorization['"]?\s*[:=,]\s*(?:b?['"])?)  # a header name: its value is scheme + credential
        [^\s'"&,;)]+(?:\ [^\s'"&,;)]+)?
    | (?P<scheme>\b(?:bearer|basic|digest|negotiate)\s+)        # an auth scheme: its token68 is the credential
        [A-Za-z0-9._~+/=-]{8,}
    | (?P<param>\b(?:client_secret|client_assertion|access_token|refresh_token|id_token|password|assertion)
        ['"]?\s*[:=]\s*(?:b?['"])?)                              # a secret-bearing parameter
        [^\s'"&,;)]+
    | \beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)*   # a compact JWS/JWE
    """
)
_CREDENTIAL_HINT = re.compile(r"(?i)authoriz|bearer|basic|digest|negotiate|secret|assertion|token|password|eyJ")
_CARD_FIRST_DIGITS = frozenset("23456")
_DIGITS_13 = re.compile(r"\d{13}")
# _CREDENTIAL_HINT's words, lowered (it is case-insensitive): kept in step by tests/test_log_secrets.py.
_HINT_WORDS = ("authoriz", "bearer", "basic", "digest", "negotiate", "secret", "assertion", "token", "password", "eyj")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits kept, the rest masked (PCI DSS display rule)."""
    return pan[:6] + MASK * (len(pan) - 10) + pan[-4:]


def _mask_run(run: str) -> str:
    if 13 <= len(run) <= 19 and luhn_valid(run):
        return mask_pan(run)
    # A PAN may be glued to other digits (hex EMV data: "5A08" + PAN + "5F24..."): look at every window that
    # starts like a card number (2-6: Mastercard, Amex/JCB/Diners, Visa, Mastercard, Discover/UnionPay).
    # Defense in depth accepts the false positives: a long non-card number may come out partly masked.
    out: list[str] = []
    i = start = 0
    while i + 13 <= len(run):
        if run[i] in _CARD_FIRST_DIGITS:
            for length in range(min(19, len(run) - i), 12, -1):
                window = run[i : i + length]
                if luhn_valid(window):
                    out.append(run[start:i])
                    out.append(mask_pan(window))
                    i = start = i + length
                    break
            else:
                i += 1
        else:
            i += 1
    out.append(run[start:])
    return "".join(out)


def mask_pans(text: str) -> str:
    """Mask every Luhn-valid 13-19 digit sequence in text as 6+4."""
    if len(text) < 13:
        return text
    return _DIGIT_RUN.sub(lambda m: _mask_run(m.group(0)), text)


@functools.lru_cache(maxsize=4096)  # keys come from code: a small set, checked on every log line
def is_sensitive_key(key: str) -> bool:
    words = [w.lower() for w in _KEY_WORDS.findall(key)]
    if "masked" in words:
        return False  # e.g. masked_pan: already 6+4, and its value is still scanned like any other
    if any(w in _SENSITIVE_WORDS for w in words):
        return True
    # Joined forms such as pin_block -> pinblock, private_key -> privatekey.
    return any(a + b in _SENSITIVE_WORDS for a, b in itertools.pairwise(words))


def _credential(m: re.Match[str]) -> str:
    return (m.group("header") or m.group("scheme") or m.group("param") or "") + REDACTED


def redact_credentials(text: str) -> str:
    """Replace credentials in free text (Authorization values, Bearer/Basic credentials, client_secret and
    token parameters, JWTs) by [REDACTED]. Hand-written: no logging library ships a scrubber for these."""
    if _CREDENTIAL_HINT.search(text) is None:  # the common case: one cheap scan
        return text
    return _CREDENTIALS.sub(_credential, text)


def _may_hold_secret(text: str) -> bool:
    """The cheap test in front of the regexes (what _DIGIT_RUN or _CREDENTIAL_HINT could find): a 13-digit run, or
    one of the hint words in any case. Plain `in` tests on the lowered text cost ~1 us a value where the two regex
    scans cost ~7 (measured under load: bench/bench_request_extras.py), and nearly every value logged is neither."""
    if len(text) >= 13 and _DIGITS_13.search(text) is not None:
        return True
    low = text.lower()
    # _HINT_WORDS unrolled (a generator over them costs as much as the rest of the test).
    return (
        "authoriz" in low
        or "bearer" in low
        or "basic" in low
        or "digest" in low
        or "negotiate" in low
        or "secret" in low
        or "assertion" in low
        or "token" in low
        or "password" in low
        or "eyj" in low
    )


# Fixed strings of ours that hold a hint word but are never a credential: the token route's event names and
# RFC 6749 method names. Each would otherwise take both regex scans on every line it is in (~20 us of the
# token route's ~40 us log line). A set of literals, never filled at run time, so nothing logged can join it.
_CLEAN_LITERALS = frozenset(
    {
        "oauth_token_issued",
        "oauth_token_throttled",
        "oauth_client_auth_failed",
        "client_secret_basic",
        "client_secret_post",
        "bearer_rejected",
    }
)


def _scrub_text(text: str) -> str:
    if len(text) < 8 or text in _CLEAN_LITERALS or not _may_hold_secret(text):
        return text
    return redact_credentials(mask_pans(text))


def _scrub(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {k: _scrub(v, depth + 1) for k, v in value.items() if not (isinstance(k, str) and is_sensitive_key(k))}
    if isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    return value


_SCALARS = frozenset({int, float, bool, type(None)})


def redact_card_data(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: drop secret/card-data keys, mask PANs and redact credentials in every string value
    (nested too)."""
    for key in [k for k in event_dict if is_sensitive_key(k)]:
        del event_dict[key]
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            event_dict[key] = _scrub_text(value)
        elif kind in _SCALARS:
            continue  # the usual case after str: no ABC isinstance check for a number
        elif isinstance(value, str):
            event_dict[key] = _scrub_text(value)
        elif isinstance(value, Mapping | list | tuple):
            event_dict[key] = _scrub(value, 1)
    return event_dict


def _json_dumps(obj: Any, **_kw: Any) -> str:
    return msgspec.json.encode(obj, enc_hook=str).decode()


def configure_logging(cfg: LoggingConfig, *, stream: TextIO | None = None) -> None:
    """Set up structlog and the stdlib root logger (Hypercorn's error log included) to write one chain."""
    level = logging.getLevelNamesMapping()[cfg.level]
    out = stream if stream is not None else sys.stderr
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
    ]
    renderer: Processor
    if cfg.format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    # Tracebacks become strings before redaction so that they are masked too.
    tail: list[Processor] = [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_card_data,
        renderer,
    ]

    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    library_level = max(level, LIBRARY_MIN_LEVEL)
    handler.setLevel(library_level)  # also for a library that sets its own logger to DEBUG
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(library_level)
    # Hypercorn gives its error logger its own handler unless handed a Logger; ours propagates to root.
    for name in ("hypercorn.error", "hypercorn.access"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers = []
        lib_logger.propagate = True
    logging.getLogger("hypercorn.access").disabled = True  # we log requests ourselves


def valid_request_id(value: str | None) -> bool:
    return value is not None and _REQUEST_ID.fullmatch(value) is not None


# A generated request id: 20 random hex digits drawn per process (and again in a forked child) and a 12-digit
# counter, 32 hex digits like a uuid4's hex. Unique without a getrandom syscall and a UUID object per request.
_id_prefix = secrets.token_hex(10)
_id_counter = itertools.count()


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(10), itertools.count()


os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    return f"{_id_prefix}{next(_id_counter) & 0xFFFFFFFFFFFF:012x}"


def request_id_from(value: str | None) -> str:
    """The caller's X-Request-Id when it is safe to echo and log (<= 64 of [A-Za-z0-9._-]), else a new one."""
    return value if value is not None and valid_request_id(value) else new_request_id()


def bind_request_id(header_value: str | None) -> str:
    """Start a request's log context from its X-Request-Id header: clear what a previous request left, bind
    request_id, return it (echo it in the response's X-Request-Id).

    Call it first thing for each request (e.g. in a Quart `before_request`); each trio task has its own
    contextvars, so concurrent requests do not see each other's ids.
    """
    request_id = request_id_from(header_value)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id
