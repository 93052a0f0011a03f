#!/usr/bin/env bash
# Installs the third-party OpAMP clients that tests/interop.rs drives, at the
# versions pinned next to this script:
#   target/interop/python  <- requirements.txt   (pip install --target)
#   target/interop/node    <- package-lock.json  (npm ci --prefix)
# Idempotent: each half is skipped when its stamp matches the pinned file.
# Needs python3 (>= 3.10) with pip, and node (>= 20.6) with npm, plus the
# package registries (PyPI, npm) on first run; offline afterwards.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/interop"
mkdir -p "$out"

need() { command -v "$1" >/dev/null || { echo "install.sh: '$1' is required for the interop tests" >&2; exit 1; }; }

# Python: opentelemetry-opamp-client
py="$out/python"
if cmp -s "$here/requirements.txt" "$py/.installed-requirements.txt"; then
    echo "interop: python client already installed in $py"
else
    need python3
    tmp="$out/python.tmp"
    rm -rf "$tmp"
    python3 -m pip install --quiet --disable-pip-version-check --no-input \
        --no-compile --root-user-action=ignore --target "$tmp" --requirement "$here/requirements.txt"
    cp "$here/requirements.txt" "$tmp/.installed-requirements.txt"
    rm -rf "$py"
    mv "$tmp" "$py"
    echo "interop: installed python client into $py"
fi

# Node: @elastic/opamp-client-node
nd="$out/node"
if cmp -s "$here/package-lock.json" "$nd/.installed-package-lock.json" \
    && [ -d "$nd/node_modules/@elastic/opamp-client-node" ]; then
    echo "interop: node client already installed in $nd"
else
    need node
    need npm
    rm -rf "$nd"
    mkdir -p "$nd"
    cp "$here/package.json" "$here/package-lock.json" "$nd/"
    npm ci --prefix "$nd" --no-audit --no-fund --loglevel=error
    cp "$here/package-lock.json" "$nd/.installed-package-lock.json"
    echo "interop: installed node client into $nd"
fi
