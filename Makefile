# The README's two commands: `make run` (the host with embedded defaults) and `make test` (everything).
# Both create .venv if missing and (re)build the native extension into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed
CONFIG ?= configs/dev.toml

.PHONY: run cluster haproxy test install native postgres lock lock-upgrade sbom promtool lint typecheck rust-test py-test wheel-check bench reliability fuzz clean

$(PY):
	$(PYTHON) -m venv $(VENV)

MATURIN := VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/maturin

# Every dependency comes from the lock, hash-checked, so that every install is the same set of files
# (docs/supply-chain.md); then the project itself, editable, resolving nothing of its own. (Re)done when the
# lock or pyproject.toml changes; a pyproject.toml the lock does not cover stops here, naming what to run.
$(STAMP): requirements/dev.txt pyproject.toml | $(PY)
	$(PY) -m pip install -q --require-hashes -r requirements/dev.txt
	$(PY) tools/requirements_lock.py check
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Recompile requirements/dev.txt (every extra: what make installs) and requirements/runtime.txt (what the
# wheel needs, at the same versions) from pyproject.toml, keeping every pin that still fits; lock-upgrade
# moves every pin to the newest release that fits. uv comes from the lock itself (bootstrapped if absent).
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --universal --generate-hashes --python-version 3.11 \
	--custom-compile-command "make lock" -q
lock: | $(PY)
	@test -x $(VENV)/bin/uv || $(PY) -m pip install -q --require-hashes -r requirements/dev.txt \
	  || $(PY) -m pip install -q uv
	$(UV_COMPILE) $(LOCK_ARGS) --extra dev --extra bench -o requirements/dev.txt
	$(UV_COMPILE) $(LOCK_ARGS) -c requirements/dev.txt -o requirements/runtime.txt
	$(PY) tools/requirements_lock.py check

lock-upgrade:
	$(MAKE) lock LOCK_ARGS=--upgrade

# A CycloneDX SBOM of the wheel's components (docs/supply-chain.md): the Python packages of
# requirements/runtime.txt as installed (cyclonedx-py, from the lock) and the Rust crates compiled into the
# native module (cargo-cyclonedx over Cargo.lock), merged into dist/cloudlayer.cdx.json and validated.
CARGO_CYCLONEDX_VERSION := 0.5.9
CARGO_CYCLONEDX := $(VENV)/bin/cargo-cyclonedx
$(CARGO_CYCLONEDX): | $(PY)
	cargo install -q --locked --root $(abspath $(VENV)) cargo-cyclonedx@$(CARGO_CYCLONEDX_VERSION)

sbom: $(STAMP) $(CARGO_CYCLONEDX)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) tools/sbom.py -o dist/cloudlayer.cdx.json

# promtool (for the alerting rules' tests) from Debian's prometheus package, unpacked into the venv: the
# package itself would also install and start a Prometheus server. One already on PATH is used as it is.
PROMTOOL := $(VENV)/bin/promtool
$(PROMTOOL): | $(PY)
	@if command -v promtool >/dev/null 2>&1; then ln -sf "$$(command -v promtool)" $@; else \
	  work=$$(mktemp -d) && cd $$work && { apt-get download prometheus >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get download prometheus; }; } \
	  && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool \
	  && install -m 0755 usr/bin/promtool $(abspath $@); rc=$$?; rm -rf $$work; exit $$rc; fi

promtool: $(PROMTOOL)

# The native module is rebuilt in place every time (cargo is incremental: seconds when nothing changed).
native: $(STAMP)
	$(MATURIN) develop --release -q --skip-install

install: native

run: native
	$(VENV)/bin/cloudlayer serve --config $(CONFIG)

# HAProxy for `make cluster`, from Debian's haproxy package: the binary unpacked into the venv as promtool is
# (no haproxy service, user or /etc/haproxy; its libraries installed when missing). One on PATH is used as is.
HAPROXY := $(VENV)/bin/haproxy
$(HAPROXY): | $(PY)
	bash scripts/ensure-haproxy.sh $(abspath $@)

haproxy: $(HAPROXY)

# Two hosts on one throw-away PostgreSQL behind HAProxy on 127.0.0.1 (docs/deploy.md), in the foreground until
# Ctrl-C; CLUSTER_ARGS="--port 0 --dir /tmp/c" to move it.
cluster: native postgres $(HAPROXY)
	$(PY) tools/cluster.py $(CLUSTER_ARGS)

rust-test:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo test -q

lint: $(STAMP)
	$(VENV)/bin/ruff check python tests bench tools
	$(VENV)/bin/ruff format --check python tests bench tools

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# PostgreSQL's server binaries from Debian's packages when absent, and the unprivileged user the tests' throw-away
# clusters run as (tests/pg_cluster.py); no system cluster is created or started.
postgres:
	bash scripts/ensure-postgres.sh >/dev/null

py-test: native postgres $(PROMTOOL) $(HAPROXY) $(CARGO_CYCLONEDX)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: rust-test native lint typecheck py-test

# A release wheel, installed into a throw-away venv as docs/deploy.md installs it (its dependencies from
# requirements/runtime.txt, hash-checked, then the wheel alone), must import its native module.
wheel-check: $(STAMP)
	rm -rf dist /tmp/cloudlayer-wheel-venv
	$(VENV)/bin/maturin build --release -q -o dist
	$(PYTHON) -m venv /tmp/cloudlayer-wheel-venv
	/tmp/cloudlayer-wheel-venv/bin/pip install -q --require-hashes -r requirements/runtime.txt
	/tmp/cloudlayer-wheel-venv/bin/pip install -q --no-deps dist/*.whl
	cd /tmp && /tmp/cloudlayer-wheel-venv/bin/python -c "import cloudlayer._native as n, cloudlayer.emv as e; print('wheel ok', n.__version__, e.decode('9F02060000000010009A03261126'))"

# Load and micro benchmarks, baselines side by side (bench/README.md); BENCH_ARGS="--quick" for a short run.
bench: native postgres
	$(PY) bench/run.py $(BENCH_ARGS)

# The long forms of the reliability suite (chaos, soak, card-data scan; the short forms run in `make test`),
# then the native fuzzers for a bounded time when a nightly toolchain is there (cargo-fuzz needs it). New
# corpus entries go to a temporary directory; a crasher lands in fuzz/artifacts/ (keep it in fuzz/regressions/).
reliability: native
	$(PY) tests/reliability/run.py $(RELIABILITY_ARGS)
	$(MAKE) fuzz

# FUZZ_SECONDS is the total, split evenly between the targets (EMV TLV, ISO 8583).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := tlv:512 iso8583:4096
fuzz:
	@if rustup toolchain list 2>/dev/null | grep -q nightly; then \
	  command -v cargo-fuzz >/dev/null || cargo install -q --locked cargo-fuzz \
	    || { echo "fuzz: cargo-fuzz could not be installed here; skipped"; exit 0; }; \
	  each=$$(( $(FUZZ_SECONDS) / $(words $(FUZZ_TARGETS)) )); [ $$each -ge 1 ] || each=1; \
	  for t in $(FUZZ_TARGETS); do \
	    name=$${t%%:*}; max=$${t##*:}; work=$$(mktemp -d); \
	    echo "fuzz: $$name for $$each s"; \
	    (cd fuzz && cargo +nightly fuzz run $$name $$work corpus/$$name -- \
	      -max_total_time=$$each -max_len=$$max); rc=$$?; rm -rf $$work; \
	    [ $$rc -eq 0 ] || exit $$rc; \
	  done; \
	else echo "fuzz: no nightly toolchain here; the corpus and regressions still run in make test"; fi

clean:
	rm -rf target dist $(VENV) var .pytest_cache .mypy_cache .ruff_cache
