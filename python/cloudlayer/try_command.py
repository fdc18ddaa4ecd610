"""`cloudlayer try URL`: behave like Mypinpad against any CloudLayer host.

Gets a token (client_credentials, `client_secret_post`), sends a sample purchase with realistic EMV data
(public test card), resends the same bytes as Mypinpad would after a timeout, and prints the decoded
answer: approved or declined, 8A and its meaning, every EMV tag by name, and whether the retry was a
byte-identical replay. Exit 0 when the host processed the purchase (approved or declined); 1 with one
line on stderr for connection, TLS, authentication or contract errors. No secret or token is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from . import emv
from .samples import sample_purchase
from .transactions.models import response_message

if TYPE_CHECKING:
    import httpx  # imported when used: every `cloudlayer` command builds this parser

TOKEN_PATH = "/oauth/token"
TRANSACTION_PATH = "/transaction/process"
SECRET_ENV = "CLOUDLAYER_CLIENT_SECRET"


class TryError(Exception):
    """A failure to report as one line (no traceback)."""


class TryOptions(msgspec.Struct, kw_only=True):
    url: str
    client_id: str
    client_secret: str
    verify: ssl.SSLContext | bool = True
    amount: int = 1000
    transaction_id: str | None = None
    token_url: str | None = None
    transaction_path: str = TRANSACTION_PATH
    timeout: float = 30.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "try",
        parents=[common],
        help="act like Mypinpad: get a token, send a sample purchase and its retry, decode the answer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", help="the host's base URL, e.g. https://127.0.0.1:8443")
    p.add_argument("--client-id", help="OAuth client id (default: the dev client under --config's var_dir)")
    p.add_argument(
        "--client-secret",
        default=os.environ.get(SECRET_ENV),
        help=f"OAuth client secret (default: ${SECRET_ENV}; keeps it out of the process list)",
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="do not verify the server certificate (dev only)")
    tls.add_argument("--cacert", metavar="FILE", help="verify the server certificate against this CA bundle")
    p.add_argument("--amount", type=int, default=1000, help="amount in minor units (default 1000: approved)")
    p.add_argument("--transaction-id", help="transactionId to send (default: a new random one)")
    p.add_argument("--token-url", help=f"token endpoint (default: URL{TOKEN_PATH})")
    p.add_argument("--transaction-path", default=TRANSACTION_PATH, help=f"default {TRANSACTION_PATH}")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_try)


def _cmd_try(args: argparse.Namespace) -> int:
    try:
        client_id, secret = _credentials(args)
        opts = TryOptions(
            url=args.url,
            client_id=client_id,
            client_secret=secret,
            verify=_verify(args.insecure, args.cacert),
            amount=args.amount,
            transaction_id=args.transaction_id,
            token_url=args.token_url,
            transaction_path=args.transaction_path,
            timeout=args.timeout,
        )
        result = run_try(opts)
    except TryError as e:
        print(f"cloudlayer try: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    if not result["retry"]["replayed"]:
        print(
            "cloudlayer try: the retry was not a byte-identical replay (exactly-once contract broken)", file=sys.stderr
        )
        return 1
    return 0


# ---- the Mypinpad exchange ---------------------------------------------------------------------------


def run_try(opts: TryOptions) -> dict[str, Any]:
    """Token, purchase, retry; the decoded outcome as a JSON-able dict. Raises TryError."""
    import httpx

    base = opts.url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise TryError(f"URL must start with https:// (or http:// for a plain dev host): {opts.url!r}")
    token_url = opts.token_url or base + TOKEN_PATH
    txn_url = base + "/" + opts.transaction_path.lstrip("/")
    body = msgspec.json.encode(sample_purchase(opts.transaction_id, amount=opts.amount))
    sent = msgspec.json.decode(body)
    with httpx.Client(verify=opts.verify, timeout=opts.timeout) as client:
        token = _get_token(client, token_url, opts.client_id, opts.client_secret)
        headers = {"Authorization": f"Bearer {token['access_token']}", "Content-Type": "application/json"}
        first = _send(client, txn_url, body, headers)
        retry = _send(client, txn_url, body, headers)
    doc = _response_document(first)
    code = str(doc.get("responseCode", ""))
    tlv = _decode_emv(str(doc.get("emvData", "")))
    arc = next((v for t, v in tlv if t == "8A" and isinstance(v, bytes)), None)
    arc_text = arc.decode("ascii", "replace") if arc is not None else None
    identical = retry.content == first.content
    header = retry.headers.get("Idempotent-Replayed") == "true"
    card = emv.card_data(str(sent["emvData"]))
    return {
        "url": base,
        "token": {
            "endpoint": token_url,
            "client_id": opts.client_id,
            "scope": token.get("scope"),
            "expires_in": token.get("expires_in"),
        },
        "request": {
            "transactionId": sent["transactionId"],
            "amount": sent["amount"],
            "currency": sent["currency"],
            "terminalId": sent["terminalId"],
            "maskedPan": card.masked_pan if card is not None else None,
        },
        "status": first.status_code,
        "elapsed_ms": round(first.elapsed.total_seconds() * 1000, 1),
        "approved": bool(doc.get("approved")),
        "responseCode": code,
        "message": doc.get("message"),
        "arc": arc_text,
        "arcMeaning": response_message(arc_text) if arc_text is not None else None,
        "response": doc,
        "emv": [_tag_json(t, v) for t, v in tlv],
        "retry": {
            "status": retry.status_code,
            "identical": identical,
            "idempotentReplayedHeader": header,
            "replayed": identical and header,
        },
    }


def _get_token(client: httpx.Client, url: str, client_id: str, secret: str) -> dict[str, Any]:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    resp = _request(client, url, data=form)
    doc = _json_or_none(resp)
    if resp.status_code != 200:
        if isinstance(doc, dict) and "error" in doc:
            reason = f"{doc['error']}: {doc.get('error_description', '')}".rstrip(": ")
        else:
            reason = f"unexpected {resp.headers.get('content-type', 'no content type')} answer"
        raise TryError(f"token request refused by {url}: HTTP {resp.status_code} ({reason})")
    if not isinstance(doc, dict) or not isinstance(doc.get("access_token"), str):
        raise TryError(f"token endpoint {url} answered 200 without an access_token")
    return doc


def _send(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    resp = _request(client, url, content=body, headers=headers)
    if resp.status_code != 200:
        doc = _json_or_none(resp)
        if isinstance(doc, dict) and "detail" in doc:
            reason = f"{doc.get('title', '')}: {doc['detail']}"
        else:
            reason = resp.reason_phrase or "no problem details"
        raise TryError(f"transaction not processed by {url}: HTTP {resp.status_code} ({reason})")
    return resp


def _request(client: httpx.Client, url: str, **kw: Any) -> httpx.Response:
    """POST, turning transport failures into one clear line."""
    import httpx

    try:
        return client.post(url, **kw)
    except httpx.TimeoutException:
        raise TryError(f"timed out talking to {url}") from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:
        raise TryError(f"bad URL {url}: {e}") from None
    except httpx.ConnectError as e:
        tls = _ssl_cause(e)
        if tls is not None:
            hint = " (use --cacert FILE, or --insecure for a dev host)" if "CERTIFICATE_VERIFY_FAILED" in tls else ""
            raise TryError(f"TLS handshake with {url} failed: {tls}{hint}") from None
        raise TryError(f"cannot connect to {url}: {_first_line(e)}") from None
    except httpx.HTTPError as e:
        raise TryError(f"HTTP error talking to {url}: {_first_line(e)}") from None


def _ssl_cause(e: BaseException) -> str | None:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return str(getattr(seen, "verify_message", None) or seen.reason or seen)
        if "SSL" in str(seen) or "CERTIFICATE" in str(seen):
            return _first_line(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _json_or_none(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _response_document(resp: httpx.Response) -> dict[str, Any]:
    doc = _json_or_none(resp)
    if not isinstance(doc, dict):
        raise TryError("the host answered 200 with a body that is not a JSON object")
    return doc


def _decode_emv(hex_data: str) -> list[tuple[str, emv.TLVValue]]:
    try:
        return emv.decode(hex_data)
    except (emv.TLVError, ValueError) as e:
        raise TryError(f"the response's emvData is not valid BER-TLV: {e}") from None


def _tag_json(tag: str, value: emv.TLVValue) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"tag": tag, "name": emv.tag_name(tag), "value": value.hex().upper()}
    return {"tag": tag, "name": emv.tag_name(tag), "children": [_tag_json(t, v) for t, v in value]}


# ---- output ----------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    req, resp, token, retry = result["request"], result["response"], result["token"], result["retry"]
    verdict = "APPROVED" if result["approved"] else "DECLINED"
    lines = [
        f"CloudLayer try {result['url']}",
        f"  token       ok from {token['endpoint']} (client {token['client_id']}, scope {token['scope']}, "
        f"expires in {token['expires_in']} s)",
        f"  purchase    {req['transactionId']}: {req['amount']} minor units, currency {req['currency']}, "
        f"terminal {req['terminalId']}, card {req['maskedPan']}",
        f"  answer      HTTP {result['status']} in {result['elapsed_ms']} ms: {verdict}",
        f"  response    code {result['responseCode']} ({resp.get('message')}), authorisation code "
        f"{resp.get('authorisationCode')}, RRN {resp.get('rrn')}, STAN {resp.get('stan')}",
    ]
    if result["arc"] is None:
        lines.append("  8A          missing from emvData (the host must always send it)")
    else:
        lines.append(f'  8A          "{result["arc"]}" = {result["arcMeaning"]}')
    lines.append(f"  EMV data    {len(result['emv'])} tag(s)")
    lines.extend(_render_tags(result["emv"], indent=4))
    if retry["replayed"]:
        lines.append("  retry       replayed the same response (byte-identical, Idempotent-Replayed: true)")
    else:
        lines.append(
            f"  retry       NOT a replay: HTTP {retry['status']}, byte-identical {retry['identical']}, "
            f"Idempotent-Replayed header {retry['idempotentReplayedHeader']}"
        )
    return "\n".join(lines)


def _render_tags(tags: list[dict[str, Any]], indent: int) -> list[str]:
    out: list[str] = []
    pad = " " * indent
    for t in tags:
        if "children" in t:
            out.append(f"{pad}{t['tag']:<6} {t['name']}")
            out.extend(_render_tags(t["children"], indent + 2))
        else:
            shown = t["value"]
            if t["tag"] == "8A":
                shown += f' ("{bytes.fromhex(t["value"]).decode("ascii", "replace")}")'
            out.append(f"{pad}{t['tag']:<6} {t['name']:<40} {shown}")
    return out


# ---- inputs ----------------------------------------------------------------------------------------


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    if args.client_id and args.client_secret:
        return str(args.client_id), str(args.client_secret)
    if args.client_id or (args.client_secret and os.environ.get(SECRET_ENV) != args.client_secret):
        raise TryError("give both --client-id and --client-secret (or neither, to use the dev client)")
    from .config import load_config
    from .oauth.service import DEV_CLIENT_FILE  # written by ensure_dev_client when dev mode starts

    cfg = load_config(getattr(args, "config", None))
    path = cfg.var_path(DEV_CLIENT_FILE)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return str(doc["client_id"]), str(doc["client_secret"])
    except (OSError, ValueError, KeyError, TypeError):
        raise TryError(
            f"no client credentials: pass --client-id and --client-secret (no dev client at {path})"
        ) from None


def _verify(insecure: bool, cacert: str | None) -> ssl.SSLContext | bool:
    if insecure:
        return False
    if cacert:
        try:
            return ssl.create_default_context(cafile=cacert)
        except (OSError, ssl.SSLError) as e:
            raise TryError(f"cannot load --cacert {cacert}: {_first_line(e)}") from None
    return True
