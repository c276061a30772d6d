# Entry points.
#   make build  builds the static agent and the Talos extension image
#   make test   installs every test dependency and runs the whole suite
# See README.md for the rest (image, secureboot-keys, bench).
SHELL := /bin/bash
MUSL_TARGET := x86_64-unknown-linux-musl
export CARGO_TARGET_DIR ?= $(CURDIR)/target
AGENT := $(CARGO_TARGET_DIR)/$(MUSL_TARGET)/release/bootstrap-agent
EXTENSION_OUT := $(CARGO_TARGET_DIR)/extension
SECUREBOOT_KEYS ?= secureboot
BUNDLE ?=
EMBED_CONFIG ?=
TALOS_VERSION ?= v1.13.9

.PHONY: build agent extension image secureboot-keys test deps lint unit homelab bench

build: extension

agent:
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	cargo build --release --locked -p bootstrap-agent --target $(MUSL_TARGET)
	@file $(AGENT) | grep -q 'static' || { echo "$(AGENT) is not statically linked" >&2; exit 1; }
	@echo "$(AGENT): $$(stat -c %s $(AGENT)) bytes, $$(file -b $(AGENT) | cut -d, -f1-2)"

extension: agent
	cargo run --locked -q -p bootstrap-agent-extension -- build \
	  --binary $(AGENT) --out $(EXTENSION_OUT) $(if $(BUNDLE),--bundle $(BUNDLE))

image: extension
	for kind in installer iso; do \
	  cargo run --locked -q -p image-factory -- imager --kind $$kind \
	    --talos-version $(TALOS_VERSION) --keys $(SECUREBOOT_KEYS) \
	    --extension $(EXTENSION_OUT)/oci --out _out \
	    $(if $(EMBED_CONFIG),--embedded-config $(EMBED_CONFIG)) || exit 1; \
	done

# Once; keep the directory private and backed up (it signs what the machine boots).
secureboot-keys:
	talosctl gen secureboot uki --common-name "catinthehack SecureBoot" --output $(SECUREBOOT_KEYS)
	talosctl gen secureboot pcr --output $(SECUREBOOT_KEYS)
	talosctl gen secureboot database --output $(SECUREBOOT_KEYS)

deps:
	bash tests/install-deps.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

# The end-to-end tests run the real `bootstrap-agent` binary: build it first.
unit:
	cargo build --locked -p bootstrap-agent
	cargo nextest run --workspace --locked --no-fail-fast

homelab:
	python3 -m pytest -q tests/homelab

test: deps lint unit homelab
