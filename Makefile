# The two commands the README names:
#   make run    start Cairn: one member, data in ./cairn.data, clients on 127.0.0.1:2379
#   make test   run the whole test suite (what CI runs)
# Both install missing system packages first (scripts/setup.sh).

# Build output lives outside the clone so that later runs (and CI) reuse it:
# a cold build of RocksDB alone takes about 14 minutes on two cores.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/cairn-target
CARGO ?= cargo
ARGS ?=

.PHONY: run test setup build lint

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release -p cairn-server

run: build
	$(CARGO_TARGET_DIR)/release/cairn $(ARGS)

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	# RUST_TEST_THREADS rather than `-- --test-threads`: criterion benches (run once
	# each in test mode here) refuse libtest arguments.
	RUST_TEST_THREADS=2 $(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc
