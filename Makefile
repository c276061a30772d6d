# Entry points.
#   make build  builds the static agent and the Talos extension image (installs what it needs)
#   make test   installs every test dependency and runs the whole suite
# See README.md for the rest (image, push-installer, secureboot-keys, versions, bench).
SHELL := /bin/bash
MUSL_TARGET := x86_64-unknown-linux-musl
export CARGO_TARGET_DIR ?= $(CURDIR)/target
AGENT := $(CARGO_TARGET_DIR)/$(MUSL_TARGET)/release/bootstrap-agent
# The same, as the messages show it (relative to the repository when it is inside it).
AGENT_SHOWN := $(patsubst $(CURDIR)/%,%,$(AGENT))
EXTENSION_OUT := $(CARGO_TARGET_DIR)/extension
SECUREBOOT_KEYS ?= secureboot
BUNDLE ?=
EMBED_CONFIG ?=

# Versions: image-factory/versions.yaml is the one source (Terraform, image-factory and Renovate
# read it too). One `key: value` per line; tests/homelab/test_versions.py checks every copy.
VERSIONS := image-factory/versions.yaml
version_of = $(shell sed -n 's/^$(1):[[:space:]]*\([^[:space:]#]*\).*$$/\1/p' $(VERSIONS))
TALOS_VERSION := $(call version_of,talos)
KUBERNETES_VERSION := $(call version_of,kubernetes)
EXTENSION_VERSION := $(call version_of,extension)
INSTALLER_REPOSITORY := $(call version_of,installer)
INSTALLER_TAG := $(TALOS_VERSION)-bootstrap-agent.$(EXTENSION_VERSION)
INSTALLER_IMAGE := $(INSTALLER_REPOSITORY):$(INSTALLER_TAG)
$(if $(and $(TALOS_VERSION),$(KUBERNETES_VERSION),$(EXTENSION_VERSION),$(INSTALLER_REPOSITORY)),,\
  $(error $(VERSIONS): talos, kubernetes, extension and installer must each be set on a `key: value` line))

# What `make image` writes: imager names its outputs <platform>-<arch>-secureboot.iso and
# installer-<arch>-secureboot.tar (pkg/imager/profile/profile.go, OutputPath). Terraform uploads
# the ISO from here and installs from INSTALLER_IMAGE.
IMAGE_OUT := _out
ISO := $(IMAGE_OUT)/metal-amd64-secureboot.iso
INSTALLER_TAR := $(IMAGE_OUT)/installer-amd64-secureboot.tar
# Where push-installer sends the installer (any skopeo destination; the default is the registry
# Terraform installs from).
PUSH_DEST ?= docker://$(INSTALLER_IMAGE)

.PHONY: build build-deps agent extension image image-needs-bundle push-installer versions \
  secureboot-keys test deps lint envtest unit homelab bench

build: build-deps extension

# A fresh Debian or Ubuntu machine: the C compiler for musl (ring's C code is built with
# x86_64-linux-musl-gcc, from musl-tools), `file` for the static-link check, and the Rust target.
build-deps:
	@missing=""; \
	command -v x86_64-linux-musl-gcc >/dev/null || missing="$$missing musl-tools"; \
	command -v file >/dev/null || missing="$$missing file"; \
	command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then \
	    echo "make build needs these Debian/Ubuntu packages:$$missing; install them (or their equivalents) and run make build again" >&2; exit 1; \
	  fi; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  echo "make build: installing$$missing with apt-get"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing || exit 1; \
	fi
	@command -v rustup >/dev/null || { echo "make build needs Rust through rustup (https://rustup.rs); install it and run make build again" >&2; exit 1; }
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)

agent:
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
	cargo build --release --locked -p bootstrap-agent --target $(MUSL_TARGET)
	@file $(AGENT_SHOWN) | grep -q 'static' || { echo "$(AGENT_SHOWN) is not statically linked" >&2; exit 1; }
	@echo "$(AGENT): $$(stat -c %s $(AGENT)) bytes, $$(file -b $(AGENT) | cut -d, -f1-2)"

extension: agent
	cargo run --locked -q -p bootstrap-agent-extension -- build \
	  --binary $(AGENT) --out $(EXTENSION_OUT) $(if $(BUNDLE),--bundle $(BUNDLE))

# An image without the bundle would boot a node whose agent fails at once: refuse it before
# building anything.
image-needs-bundle:
	@[ -n "$(BUNDLE)" ] || { \
	  echo "make image needs the pinned bundle the agent installs at boot (BUNDLE=DIR). Build it with:" >&2; \
	  echo "  make agent" >&2; \
	  echo "  $(AGENT_SHOWN) bundle refresh        # once per version change in agent/bundle/bundle.lock.yaml; commit the pins" >&2; \
	  echo "  $(AGENT_SHOWN) bundle fetch --out target/bundle" >&2; \
	  echo "  make image BUNDLE=target/bundle" >&2; \
	  exit 2; }

image: image-needs-bundle agent
	@$(AGENT) bundle verify $(BUNDLE) || { \
	  echo "$(BUNDLE) is not a complete, pinned bundle: run $(AGENT_SHOWN) bundle refresh (if the lock has empty sha256 pins), then $(AGENT_SHOWN) bundle fetch --out $(BUNDLE)" >&2; exit 2; }
	@diff <(grep -oE '[0-9a-f]{64}' agent/bundle/bundle.lock.yaml | sort) <(grep -oE '[0-9a-f]{64}' $(BUNDLE)/bundle.lock.yaml | sort) >/dev/null || { \
	  echo "$(BUNDLE) holds other pins than agent/bundle/bundle.lock.yaml: run $(AGENT_SHOWN) bundle fetch --out $(BUNDLE)" >&2; exit 2; }
	$(MAKE) --no-print-directory extension BUNDLE=$(BUNDLE)
	for kind in installer iso; do \
	  cargo run --locked -q -p image-factory -- imager --kind $$kind \
	    --talos-version $(TALOS_VERSION) --keys $(SECUREBOOT_KEYS) \
	    --extension $(EXTENSION_OUT)/oci --out $(IMAGE_OUT) \
	    $(if $(EMBED_CONFIG),--embedded-config $(EMBED_CONFIG)) || exit 1; \
	done

# Pushes the installer `make image` wrote to the registry Terraform installs from (log in first:
# `skopeo login ghcr.io`). Never push an image built with EMBED_CONFIG: it holds the cluster's
# secrets.
push-installer:
	@[ -f $(INSTALLER_TAR) ] || { echo "$(INSTALLER_TAR) does not exist: build it with make image BUNDLE=target/bundle" >&2; exit 2; }
	@[ -z "$(EMBED_CONFIG)" ] || { echo "refusing to push an installer built with EMBED_CONFIG: it holds the cluster's secrets" >&2; exit 2; }
	skopeo copy docker-archive:$(INSTALLER_TAR) $(PUSH_DEST)

# What this Makefile read from image-factory/versions.yaml, and the paths it writes.
versions:
	@echo "talos=$(TALOS_VERSION)"
	@echo "kubernetes=$(KUBERNETES_VERSION)"
	@echo "extension=$(EXTENSION_VERSION)"
	@echo "installer_image=$(INSTALLER_IMAGE)"
	@echo "iso=$(ISO)"
	@echo "installer_tar=$(INSTALLER_TAR)"

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

# The real-API-server tests start kube-apiserver and etcd from $$KUBEBUILDER_ASSETS (the envtest
# convention), else from ../shared/envtest beside the repository.
ENVTEST_ASSETS := $(or $(KUBEBUILDER_ASSETS),$(abspath $(CURDIR)/../shared/envtest))
envtest:
	@for b in kube-apiserver etcd; do [ -x "$(ENVTEST_ASSETS)/$$b" ] || { \
	  echo "$(ENVTEST_ASSETS)/$$b is missing: the real-API-server tests need kube-apiserver and etcd; set KUBEBUILDER_ASSETS to a folder holding both (for example from setup-envtest), or put them in ../shared/envtest" >&2; exit 1; }; done
	@echo "envtest: $$($(ENVTEST_ASSETS)/kube-apiserver --version), etcd $$($(ENVTEST_ASSETS)/etcd --version | sed -n 's/^etcd Version: //p')"

# The end-to-end tests run the real `bootstrap-agent` binary: build it first.
unit: envtest
	cargo build --locked -p bootstrap-agent
	cargo nextest run --workspace --locked --no-fail-fast

homelab:
	python3 -m pytest -q tests/homelab

test: deps lint unit homelab
