"""`cloudlayer keys rotate-sealing` and `keys retire-sealing`: the sealing key's life cycle.

rotate-sealing: a new active key; running workers seal with it within a second; the old key keeps opening
what it sealed. Then, and on every `retire-sealing`, each retired key that no stored blob uses any more and
that was retired more than `server.sealing_retire_grace` seconds ago (time for every worker to have picked up
the rotation) is removed from the ring.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..audit import commands as audit
from ..config import Config, load_config
from .ring import RingError, drop_keys, ensure_ring, read_ring, rotate
from .sealer import Sealer
from .usage import UsageUnknown, sealed_blob_usage


def register(ksub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = ksub.add_parser(
        "rotate-sealing", parents=[common], help="new card-data sealing key; retire old keys nothing uses any more"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_rotate)
    audit.mark(p, "keys rotate-sealing")
    p = ksub.add_parser("retire-sealing", parents=[common], help="drop retired sealing keys nothing uses any more")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_retire)
    audit.mark(p, "keys retire-sealing")


def retire_unused(cfg: Config, now: float | None = None) -> tuple[list[str], dict[str, str]]:
    """(dropped kids, kept retired kid -> why). Never drops the active key or a key anything still uses."""
    now = time.time() if now is None else now
    path = cfg.var_path(cfg.server.sealing_key_file)
    ring = read_ring(path)
    retired = {kid: k for kid, k in ring.keys.items() if kid != ring.active and k.retired_at is not None}
    if not retired:
        return [], {}
    kept: dict[str, str] = {}
    try:
        usage = sealed_blob_usage(cfg, Sealer.from_file(path))
    except UsageUnknown as e:
        return [], dict.fromkeys(retired, str(e))
    candidates: set[str] = set()
    for kid, k in retired.items():
        assert k.retired_at is not None
        if usage[kid]:
            kept[kid] = f"still seals {usage[kid]} stored entr{'y' if usage[kid] == 1 else 'ies'}"
        elif now - k.retired_at < cfg.server.sealing_retire_grace:
            kept[kid] = f"retired less than server.sealing_retire_grace={cfg.server.sealing_retire_grace:g} s ago"
        else:
            candidates.add(kid)
    # Workers seal only with the active key, so nothing can start using a retired key after the scan.
    return drop_keys(path, candidates), kept


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"cloudlayer: {message}", file=sys.stderr)
    audit.note(args, error=message)
    return 1


def _report(args: argparse.Namespace, doc: dict[str, Any], lines: list[str]) -> None:
    print(json.dumps(doc) if args.json else "\n".join(lines))


def _cmd_rotate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    try:
        old, new = rotate(cfg.var_path(cfg.server.sealing_key_file))
        dropped, kept = retire_unused(cfg)
    except (RingError, OSError) as e:
        return _fail(args, str(e))
    audit.note(args, obj=f"sealing-key:{new}", detail={"retired": old, "dropped": dropped})
    lines = [f"new active sealing key {new}; running workers seal with it within a second; {old} retired"]
    lines += [f"dropped retired key {kid} (nothing uses it)" for kid in dropped]
    lines += [f"kept retired key {kid}: {why}" for kid, why in kept.items()]
    _report(args, {"active": new, "retired": old, "dropped": dropped, "kept": kept}, lines)
    return 0


def _cmd_retire(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    try:
        dropped, kept = retire_unused(cfg)
    except (RingError, OSError) as e:
        return _fail(args, str(e))
    audit.note(args, obj="sealing-keys", detail={"dropped": dropped, "kept": sorted(kept)})
    lines = [f"dropped retired key {kid} (nothing uses it)" for kid in dropped]
    lines += [f"kept retired key {kid}: {why}" for kid, why in kept.items()] or ["no retired key kept"]
    _report(args, {"dropped": dropped, "kept": kept}, lines)
    return 0


def sealing_rows(cfg: Config, now: float | None = None) -> list[dict[str, Any]]:
    """What `keys list` shows of the ring: ids, states, ages and how many stored blobs each seals."""
    now = time.time() if now is None else now
    path = cfg.var_path(cfg.server.sealing_key_file)
    ring = ensure_ring(path)
    try:
        usage: dict[str, int] | None = dict(sealed_blob_usage(cfg, Sealer(ring)))
    except UsageUnknown:
        usage = None
    return [
        {
            "kind": "sealing",
            "kid": kid,
            "alg": "A256GCM",
            "active": kid == ring.active,
            "created_at": k.created_at,
            "age_days": round((now - k.created_at) / 86_400, 2),
            "retired_at": k.retired_at,
            "in_use": None if usage is None else usage.get(kid, 0),
        }
        for kid, k in ring.keys.items()
    ]
