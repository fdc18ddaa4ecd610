"""The pinned supply chain: the lock covers pyproject.toml, the venv is the lock, the SBOM names what ships."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
from requirements_lock import parse_lock  # a script beside the sbom tool, not a package

CHECK = [sys.executable, str(REPO / "tools/requirements_lock.py"), "check"]


def check(root: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHECK, "--root", str(root)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of pyproject.toml and the lock files to break."""
    (tmp_path / "requirements").mkdir()
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for name in ("dev.txt", "runtime.txt"):
        shutil.copy(REPO / "requirements" / name, tmp_path / "requirements" / name)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_the_lock_covers_pyproject() -> None:
    result = check()
    assert result.returncode == 0, result.stderr
    assert "requirements lock ok" in result.stdout


def test_a_dependency_added_without_relocking_is_named(project: Path) -> None:
    # A real package the lock does not hold (psycopg served here until the PostgreSQL store locked it).
    edit(project / "pyproject.toml", '  "h2>=4.1",\n', '  "h2>=4.1",\n  "tomli-w[extra]>=1.0",\n')
    result = check(project)
    assert result.returncode == 1
    assert "tomli-w[extra]>=1.0 ([project.dependencies] of pyproject.toml) is not pinned" in result.stderr
    assert "run `make lock`" in result.stderr


def test_a_pin_outside_the_specifier_is_named(project: Path) -> None:
    edit(project / "pyproject.toml", '"msgspec>=0.19"', '"msgspec>=99"')
    result = check(project)
    assert result.returncode == 1
    assert re.search(r"msgspec==[\d.]+ does not satisfy `msgspec>=99`", result.stderr), result.stderr


def test_a_pin_without_hashes_is_named(project: Path) -> None:
    lock = project / "requirements/dev.txt"
    text = lock.read_text()
    start = text.index("\ntrio==") + 1
    end = text.index("\n    #", start)
    pin_line = text[start:end].split(" \\")[0]
    lock.write_text(text[:start] + pin_line + text[end:])
    result = check(project)
    assert result.returncode == 1
    assert re.search(r"requirements/dev.txt:\d+: trio==[\d.]+ has no --hash", result.stderr), result.stderr


def test_a_runtime_pin_that_is_not_the_tested_one_is_named(project: Path) -> None:
    lock = project / "requirements/runtime.txt"
    version = next(p.version for p in parse_lock(lock) if p.name == "structlog")
    edit(lock, f"structlog=={version}", "structlog==24.0.0")
    result = check(project)
    assert result.returncode == 1
    assert "structlog==24.0.0 is not what requirements/dev.txt pins" in result.stderr


def test_a_dependency_dropped_from_pyproject_is_named(project: Path) -> None:
    edit(project / "pyproject.toml", '  "pyiso8583>=3",\n', "")
    result = check(project)
    assert result.returncode == 1
    assert "pyiso8583 is pinned for pyproject.toml, which no longer asks for it" in result.stderr


def test_this_venv_is_exactly_the_lock() -> None:
    """`make` installed every applying pin of requirements/dev.txt at its locked version."""
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {
        pin.name: (pin.version, installed.get(pin.name))
        for pin in parse_lock(REPO / "requirements/dev.txt")
        if pin.applies() and installed.get(pin.name) != pin.version
    }
    assert not wrong, f"(locked, installed) differ - run `make`: {wrong}"


# --- the SBOM -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sbom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What `make sbom` writes, made here by the same tool (cargo-cyclonedx from .venv, as make installs it)."""
    out = tmp_path_factory.mktemp("sbom") / "cloudlayer.cdx.json"
    venv_bin = Path(sys.executable).parent
    env = {"PATH": f"{venv_bin}:{Path.home() / '.cargo/bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())}
    subprocess.run(
        [sys.executable, str(REPO / "tools/sbom.py"), "-o", str(out)], check=True, timeout=600, env=env, cwd=REPO
    )
    return dict(json.loads(out.read_text()))


def components(sbom: dict[str, Any], ecosystem: str) -> dict[str, str]:
    return {
        canonicalize_name(c["name"]) if ecosystem == "pypi" else c["name"]: c["version"]
        for c in sbom["components"]
        if c.get("purl", "").startswith(f"pkg:{ecosystem}/")
    }


def test_sbom_names_the_python_runtime_at_its_locked_versions(sbom: dict[str, Any]) -> None:
    python = components(sbom, "pypi")
    locked = {p.name: p.version for p in parse_lock(REPO / "requirements/runtime.txt") if p.applies()}
    assert python == locked
    for name in ("msgspec", "trio", "lmdb", "joserfc", "cryptography", "hypercorn", "quart-trio"):
        assert name in python
    for tool in ("pytest", "mypy", "ruff", "uv", "maturin", "cyclonedx-bom", "fastapi"):
        assert tool not in python, f"{tool} is a dev tool, not part of the wheel"


def test_sbom_names_the_rust_crates_of_the_native_module(sbom: dict[str, Any]) -> None:
    rust = components(sbom, "cargo")
    lock = {p["name"]: p["version"] for p in tomllib.loads((REPO / "Cargo.lock").read_text())["package"]}
    assert rust["cloudlayer-native"] == lock["cloudlayer-native"]
    for name in ("pyo3", "pyo3-ffi", "sha2"):
        assert rust[name] == lock[name]
    # Exactly what cargo builds for this host with maturin's features (target-specific crates aside).
    tree = subprocess.run(
        ["cargo", "tree", "-e", "normal,build", "-F", "extension-module", "--prefix", "none", "-f", "{p}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=120,
    ).stdout
    built = {line.split()[0]: line.split()[1].lstrip("v") for line in tree.splitlines() if line.strip()}
    assert rust == built


def test_sbom_is_one_graph_rooted_at_the_wheel(sbom: dict[str, Any]) -> None:
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    root = sbom["metadata"]["component"]
    assert (root["name"], root["purl"]) == ("cloudlayer", "pkg:pypi/cloudlayer@0.1.0")
    refs = {c["bom-ref"] for c in sbom["components"]}
    graph = {d["ref"]: d.get("dependsOn", []) for d in sbom["dependencies"]}
    assert "pkg:cargo/cloudlayer-native@0.1.0" in graph[root["bom-ref"]]
    assert all(r in refs for deps in graph.values() for r in deps)
    # Every component is reachable from the root; no machine's path leaks into the document.
    seen, todo = set(), [root["bom-ref"]]
    while todo:
        ref = todo.pop()
        if ref not in seen:
            seen.add(ref)
            todo += graph.get(ref, [])
    assert refs <= seen, refs - seen
    assert "file://" not in json.dumps(sbom)
    msgspec = next(c for c in sbom["components"] if c["name"] == "msgspec")
    assert msgspec["licenses"] and msgspec["externalReferences"][-1]["hashes"]
