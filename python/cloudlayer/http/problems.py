"""RFC 9457 problem details: every error we answer is `application/problem+json` naming what is wrong."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from quart import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"
# Problem types are URI references resolved against our own host (RFC 9457 section 3.1.1); each is
# listed in openapi.json.
TYPE_BASE = "/problems/"

_encoder = msgspec.json.Encoder()


class Problem(Exception):
    """Raise anywhere in request handling; the app turns it into a problem+json response."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self, instance: str | None = None) -> bytes:
        doc: dict[str, Any] = {
            "type": TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            doc["field"] = self.field
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return _encoder.encode(doc)

    def response(self, instance: str | None = None) -> Response:
        resp = Response(self.body(instance), status=self.status, content_type=PROBLEM_CONTENT_TYPE)
        for k, v in self.headers.items():
            resp.headers[k] = v
        return resp


_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")
_ENUM = re.compile(r"^Invalid enum value .*$")


def from_validation_error(e: msgspec.ValidationError) -> Problem:
    """msgspec says 'Expected `int` >= 1 - at `$.amount`': keep the sentence, name the field."""
    message = str(e)
    m = _AT_PATH.search(message)
    field = None
    if m:
        path = m.group("path")
        field = path[1:] if path.startswith(".") else (path or None)
        message = message[: m.start()]
    missing = _MISSING.match(message)
    if missing:
        name = missing.group("name")
        field = f"{field}.{name}" if field else name
        message = "required field is missing"
    elif _ENUM.match(message):
        message = "not one of the allowed values"  # never echo the value back: it could be anything
    if field:
        # Values are never echoed back (they may be card data); msgspec's text names types and limits only.
        detail = f"{field}: {message}"
    else:
        detail = message
    return Problem(422, "invalid-field", "Invalid request field", detail, field=field)


def from_decode_error(e: msgspec.DecodeError) -> Problem:
    return Problem(400, "malformed-json", "Malformed JSON", f"request body is not valid JSON: {e}")
