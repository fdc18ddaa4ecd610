# The README's two commands: `make run` (the host with embedded defaults) and `make test` (everything).
# Both create .venv if missing and (re)build the native extension into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed
CONFIG ?= configs/dev.toml

.PHONY: run test install native postgres lint typecheck rust-test py-test wheel-check bench reliability fuzz clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip 'maturin>=1.7,<2'

MATURIN := VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/maturin

# Editable install with every dependency, (re)done when pyproject.toml changes.
$(STAMP): pyproject.toml | $(PY)
	$(MATURIN) develop --release -q -E dev,bench
	touch $(STAMP)

# The native module is rebuilt in place every time (cargo is incremental: seconds when nothing changed).
native: $(STAMP)
	$(MATURIN) develop --release -q --skip-install

install: native

run: native
	$(VENV)/bin/cloudlayer serve --config $(CONFIG)

rust-test:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo test -q

lint: $(STAMP)
	$(VENV)/bin/ruff check python tests bench
	$(VENV)/bin/ruff format --check python tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# PostgreSQL's server binaries from Debian's packages when absent, and the unprivileged user the tests' throw-away
# clusters run as (tests/pg_cluster.py); no system cluster is created or started.
postgres:
	bash scripts/ensure-postgres.sh >/dev/null

py-test: native postgres
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: rust-test native lint typecheck py-test

# A release wheel, installed into a throw-away venv, must import its native module.
wheel-check: $(STAMP)
	rm -rf dist /tmp/cloudlayer-wheel-venv
	$(VENV)/bin/maturin build --release -q -o dist
	$(PYTHON) -m venv /tmp/cloudlayer-wheel-venv
	/tmp/cloudlayer-wheel-venv/bin/pip install -q dist/*.whl
	cd /tmp && /tmp/cloudlayer-wheel-venv/bin/python -c "import cloudlayer._native as n, cloudlayer.emv as e; print('wheel ok', n.__version__, e.decode('9F02060000000010009A03261126'))"

# Load and micro benchmarks, baselines side by side (bench/README.md); BENCH_ARGS="--quick" for a short run.
bench: native postgres
	$(PY) bench/run.py $(BENCH_ARGS)

# The long forms of the reliability suite (chaos, soak, card-data scan; the short forms run in `make test`),
# then the EMV fuzzer for a bounded time when a nightly toolchain is there (cargo-fuzz needs it). New
# corpus entries go to a temporary directory; a crasher lands in fuzz/artifacts/ (keep it in fuzz/regressions/).
reliability: native
	$(PY) tests/reliability/run.py $(RELIABILITY_ARGS)
	$(MAKE) fuzz

FUZZ_SECONDS ?= 60
fuzz:
	@if rustup toolchain list 2>/dev/null | grep -q nightly; then \
	  command -v cargo-fuzz >/dev/null || cargo install -q --locked cargo-fuzz \
	    || { echo "fuzz: cargo-fuzz could not be installed here; skipped"; exit 0; }; \
	  work=$$(mktemp -d) && cd fuzz && cargo +nightly fuzz run tlv $$work corpus/tlv -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=512; rc=$$?; rm -rf $$work; exit $$rc; \
	else echo "fuzz: no nightly toolchain here; the corpus and regressions still run in make test"; fi

clean:
	rm -rf target dist $(VENV) var .pytest_cache .mypy_cache .ruff_cache
