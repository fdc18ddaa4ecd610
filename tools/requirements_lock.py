"""Check that the compiled lock files (requirements/*.txt) cover pyproject.toml: `tools/requirements_lock.py check`.

`make lock` compiles them with uv (docs/supply-chain.md); this is the check that they still fit pyproject.toml,
run by `make` before it installs and by the tests. It fails, naming the package and the command to run, when:

- a requirement of pyproject.toml is not pinned in the lock that must cover it, or is pinned at a version its
  specifier excludes (someone edited pyproject.toml and did not run `make lock`);
- the lock pins something as a direct requirement of pyproject.toml that pyproject.toml no longer asks for;
- a pin carries no `--hash` (pip's `--require-hashes` would refuse the whole file anyway; say which);
- runtime.txt (what the wheel needs) pins a package at another version or with other hashes than dev.txt
  (what was tested);
- for this interpreter, more than one pin of a package applies (their markers overlap).

The lock format is pip's requirements format as uv writes it; parsed here by hand because pip has no public API
for it, and the `packaging` library (pinned in the lock) does the specifier and marker work.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
FIX = "run `make lock`"
PROJECT_VIA = "cloudlayer (pyproject.toml)"

# Which lock covers which part of pyproject.toml: runtime.txt the wheel's own dependencies, dev.txt everything
# that `make` installs.
LOCKS: dict[str, tuple[str, ...]] = {
    "requirements/runtime.txt": (),
    "requirements/dev.txt": ("dev", "bench"),
}


@dataclass
class Pin:
    name: str
    version: str
    marker: Marker | None
    hashes: frozenset[str]
    via: list[str] = field(default_factory=list)
    line: int = 0

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def parse_lock(path: Path) -> list[Pin]:
    """The pins of a uv/pip-compile requirements file: `name==version ; marker \\` + `--hash=` lines + `# via`."""
    pins: list[Pin] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        if not raw.strip() or raw.lstrip().startswith("#"):
            if pins and raw.startswith("    #"):
                text = raw.strip().lstrip("#").strip()
                if text.startswith("via "):
                    pins[-1].via.append(text[4:].strip())
                elif text and text != "via":
                    pins[-1].via.append(text)
            i += 1
            continue
        logical = raw.rstrip()
        while logical.endswith("\\") and i + 1 < len(lines):
            i += 1
            logical = logical[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        parts = logical.split(" --hash=")
        spec, hashes = parts[0].strip(), frozenset(h.strip() for h in parts[1:])
        if spec.startswith("-"):
            raise SystemExit(f"{path}:{start}: option lines are not expected in a lock: {spec}")
        req = Requirement(spec)
        versions = [s.version for s in req.specifier if s.operator == "=="]
        if len(versions) != 1 or len(req.specifier) != 1:
            raise SystemExit(f"{path}:{start}: {req.name} is not pinned with == (a lock pins exactly)")
        pins.append(Pin(canonicalize_name(req.name), versions[0], req.marker, hashes, line=start))
    return pins


def project_requirements(pyproject: Path, extras: tuple[str, ...]) -> list[tuple[str, Requirement]]:
    """(where, requirement) for the base dependencies and the given extras of pyproject.toml."""
    project = tomllib.loads(pyproject.read_text())["project"]
    out = [("[project.dependencies]", Requirement(r)) for r in project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        out += [(f"[project.optional-dependencies] {extra}", Requirement(r)) for r in optional.get(extra, [])]
    return out


def check_lock(lock: Path, requirements: list[tuple[str, Requirement]], label: str) -> list[str]:
    problems: list[str] = []
    pins = parse_lock(lock)
    by_name: dict[str, list[Pin]] = defaultdict(list)
    for pin in pins:
        by_name[pin.name].append(pin)
        if not pin.hashes:
            problems.append(f"{label}:{pin.line}: {pin.name}=={pin.version} has no --hash ({FIX})")
    wanted: set[str] = set()
    for where, req in requirements:
        wanted.add(canonicalize_name(req.name))
        found = by_name.get(canonicalize_name(req.name), [])
        if not found:
            problems.append(f"{label}: {req} ({where} of pyproject.toml) is not pinned ({FIX})")
            continue
        for pin in found:
            if not req.specifier.contains(pin.version, prereleases=True):
                problems.append(
                    f"{label}:{pin.line}: {pin.name}=={pin.version} does not satisfy `{req}` ({where}) ({FIX})"
                )
    for name, group in by_name.items():
        if name not in wanted and any(v == PROJECT_VIA for pin in group for v in pin.via):
            problems.append(f"{label}: {name} is pinned for pyproject.toml, which no longer asks for it ({FIX})")
        applying = [pin for pin in group if pin.applies()]
        if len(applying) > 1:
            lines = ", ".join(str(p.line) for p in applying)
            problems.append(f"{label}: {name} is pinned more than once for this interpreter (lines {lines})")
    return problems


def check_subset(runtime: Path, dev: Path) -> list[str]:
    """Every runtime pin must be the very pin that was tested (same version, marker and hashes in dev.txt)."""
    dev_pins: dict[str, list[Pin]] = defaultdict(list)
    for pin in parse_lock(dev):
        dev_pins[pin.name].append(pin)
    problems = []
    for pin in parse_lock(runtime):
        # Markers may read differently (runtime.txt is resolved over fewer packages): version and files decide.
        tested = dev_pins.get(pin.name, [])
        if not any(other.version == pin.version and other.hashes == pin.hashes for other in tested):
            versions = ", ".join(other.version for other in tested) or "nothing"
            problems.append(
                f"requirements/runtime.txt:{pin.line}: {pin.name}=={pin.version} is not what requirements/dev.txt "
                f"pins ({versions}) ({FIX})"
            )
    return problems


def check(root: Path) -> list[str]:
    problems: list[str] = []
    for rel, extras in LOCKS.items():
        lock = root / rel
        if not lock.exists():
            problems.append(f"{rel} is missing ({FIX})")
            continue
        problems += check_lock(lock, project_requirements(root / "pyproject.toml", extras), rel)
    if not problems:
        problems += check_subset(root / "requirements/runtime.txt", root / "requirements/dev.txt")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["check"])
    parser.add_argument("--root", type=Path, default=ROOT, help="project directory (default: this checkout)")
    args = parser.parse_args(argv)
    problems = check(args.root)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"requirements lock ok: {', '.join(LOCKS)} cover pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
