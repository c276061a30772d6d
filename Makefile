# Entry points. `make build` builds the static agent; `make test` installs every test
# dependency and runs the whole suite. See README.md.
SHELL := /bin/bash
MUSL_TARGET := x86_64-unknown-linux-musl
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: build test deps check lint fmt

build:
	rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	cargo build --release --locked -p bootstrap-agent --target $(MUSL_TARGET)
	@ls -l $(CARGO_TARGET_DIR)/$(MUSL_TARGET)/release/bootstrap-agent

deps:
	bash tests/install-deps.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

test: deps lint
	cargo nextest run --workspace --locked --no-fail-fast
