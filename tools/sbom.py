"""`make sbom`: one CycloneDX 1.5 SBOM of the wheel's components, Python and Rust, in dist/cloudlayer.cdx.json.

- Python: `cyclonedx-py environment` over this venv (names, versions, licenses and the dependency graph from
  the installed metadata), kept to the packages of requirements/runtime.txt: the wheel's dependencies, not the
  dev tools beside them. Each must be installed at its locked version (`make` installs from the lock, and
  tools/requirements_lock.py checks that runtime.txt pins what dev.txt pins); the lock's file hashes are added
  as the component's distribution reference.
- Rust: `cargo cyclonedx` over Cargo.lock with the features maturin builds with, for this host's target: the
  crates compiled into cloudlayer._native (build-time crates are kept, marked scope "excluded" as cargo-cyclonedx
  marks them).

The merge is a few lines here: the CycloneDX tool that merges BOMs (cyclonedx-cli) is a .NET program, in none
of the registries we install from. The result is validated against the CycloneDX 1.5 JSON schema
(cyclonedx-python-lib, which cyclonedx-py brings) before it is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import uuid
from pathlib import Path
from typing import Any

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from requirements_lock import parse_lock  # a sibling script, not a package

ROOT = Path(__file__).resolve().parent.parent
SPEC = "1.5"
# maturin builds the extension with these (pyproject.toml [tool.maturin] features).
RUST_FEATURES = "extension-module"
ROOT_REF = "pkg:pypi/cloudlayer"
NATIVE_NAME = "cloudlayer-native"

Json = dict[str, Any]


def run(argv: list[str], **kwargs: Any) -> None:
    subprocess.run(argv, check=True, cwd=ROOT, timeout=600, **kwargs)


def python_bom(work: Path) -> Json:
    out = work / "python.cdx.json"
    run(
        [
            str(Path(sys.executable).parent / "cyclonedx-py"),
            "environment",
            sys.executable,
            "--pyproject",
            "pyproject.toml",
            "--sv",
            SPEC,
            "--of",
            "JSON",
            "--output-reproducible",
            "-o",
            str(out),
        ],
        stderr=subprocess.DEVNULL,  # a warning about the root's graph, which we build ourselves below
    )
    return dict(json.loads(out.read_text()))


def rust_bom(work: Path) -> Json:
    cargo_cyclonedx = shutil.which("cargo-cyclonedx")
    if cargo_cyclonedx is None:
        raise SystemExit("sbom: cargo-cyclonedx is not installed (`make sbom` installs it into .venv)")
    name = f"sbom-{uuid.uuid4().hex}"
    # cargo-cyclonedx writes beside Cargo.toml: take the file away at once.
    run(
        [
            cargo_cyclonedx,
            "cyclonedx",
            "-q",
            "-f",
            "json",
            "--spec-version",
            SPEC,
            "-F",
            RUST_FEATURES,
            "--override-filename",
            name,
        ]
    )
    produced = ROOT / f"{name}.json"
    target = work / "rust.cdx.json"
    shutil.move(produced, target)
    return dict(json.loads(target.read_text()))


def runtime_pins() -> dict[str, Any]:
    return {pin.name: pin for pin in parse_lock(ROOT / "requirements/runtime.txt") if pin.applies()}


def merge(py: Json, rust: Json) -> Json:
    pins = runtime_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}

    # Python: the runtime packages only, at their locked versions.
    kept: dict[str, Json] = {}
    for component in py.get("components", []):
        name = canonicalize_name(component["name"])
        pin = pins.get(name)
        if pin is None:
            continue
        if component["version"] != pin.version:
            raise SystemExit(
                f"sbom: {name} {component['version']} is installed but requirements/runtime.txt pins {pin.version}"
                " (run `make` to install the lock)"
            )
        component.setdefault("externalReferences", []).append(
            {
                "type": "distribution",
                "url": f"https://pypi.org/project/{name}/{pin.version}/",
                "comment": "the files requirements/runtime.txt allows (pip --require-hashes)",
                "hashes": [{"alg": "SHA-256", "content": h.split(":", 1)[1]} for h in sorted(pin.hashes)],
            }
        )
        kept[component["bom-ref"]] = component
    missing = sorted(set(pins) - {canonicalize_name(c["name"]) for c in kept.values()})
    if missing:
        raise SystemExit(f"sbom: locked runtime packages not installed in this venv: {missing} (run `make`)")
    by_name = {canonicalize_name(c["name"]): ref for ref, c in kept.items()}
    py_deps = [
        {"ref": d["ref"], "dependsOn": sorted(r for r in d.get("dependsOn", []) if r in kept)}
        for d in py.get("dependencies", [])
        if d["ref"] in kept
    ]

    # Rust: the native crate becomes a component of the wheel, under a reference that names no local path.
    native = dict(rust["metadata"]["component"])
    local_ref = native["bom-ref"]
    native_ref = f"pkg:cargo/{NATIVE_NAME}@{native['version']}"
    native["bom-ref"] = native_ref
    native["purl"] = native_ref
    native.pop("components", None)  # its Cargo targets (lib): the crate is what ships

    def fix(ref: str) -> str:
        return native_ref if ref == local_ref else ref

    rust_deps = [
        {"ref": fix(d["ref"]), "dependsOn": [fix(r) for r in d.get("dependsOn", [])]}
        for d in rust.get("dependencies", [])
    ]

    root = dict(py["metadata"]["component"])
    root["bom-ref"] = f"{ROOT_REF}@{project['version']}"
    root["purl"] = root["bom-ref"]
    root["type"] = "library"  # a wheel
    root_deps = [*sorted(by_name[n] for n in direct if n in by_name), native_ref]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": rust["metadata"].get("timestamp"),
            "tools": [{"name": "cyclonedx-py"}, {"name": "cargo-cyclonedx"}, {"name": "tools/sbom.py"}],
            "component": root,
        },
        "components": [*kept.values(), native, *rust.get("components", [])],
        "dependencies": [{"ref": root["bom-ref"], "dependsOn": root_deps}, *py_deps, *rust_deps],
    }


def validate(bom: Json) -> None:
    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(bom))
    if error is not None:
        raise SystemExit(f"sbom: the merged SBOM is not valid CycloneDX {SPEC}: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "dist/cloudlayer.cdx.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cloudlayer-sbom-") as tmp:
        bom = merge(python_bom(Path(tmp)), rust_bom(Path(tmp)))
    validate(bom)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(args.output.name + f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(bom, indent=2) + "\n")
    partial.replace(args.output)
    print(f"sbom: {args.output} ({len(bom['components'])} components)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
