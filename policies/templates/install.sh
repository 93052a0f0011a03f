#!/usr/bin/env bash
# Installs the toolchains the Python and JavaScript policy templates build
# with, at the versions pinned beside them (tests/policy_languages.rs and
# scripts/test run it):
#   target/policy-templates/python      <- python/requirements.txt (componentize-py)
#   policies/templates/javascript/node_modules <- javascript/package-lock.json
#                                          (@bytecodealliance/componentize-js)
# Idempotent: each half is skipped when its stamp matches the pinned file.
# Needs python3 (>= 3.10) with pip, and node (>= 20) with npm, plus PyPI and
# npm on first run; offline afterwards.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

need() { command -v "$1" >/dev/null || { echo "policies/templates/install.sh: '$1' is required" >&2; exit 1; }; }

# Python: componentize-py (a wheel with the native tool inside).
py="$root/target/policy-templates/python"
if cmp -s "$here/python/requirements.txt" "$py/.installed-requirements.txt"; then
    echo "templates: componentize-py already installed in $py"
else
    need python3
    tmp="$py.tmp"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$py")"
    python3 -m pip install --quiet --disable-pip-version-check --no-input \
        --no-compile --root-user-action=ignore --target "$tmp" --requirement "$here/python/requirements.txt"
    cp "$here/python/requirements.txt" "$tmp/.installed-requirements.txt"
    rm -rf "$py"
    mv "$tmp" "$py"
    echo "templates: installed componentize-py into $py"
fi

# JavaScript: componentize-js, in the template's own node_modules (where its
# build script imports it from, as in a copy of the template).
js="$here/javascript"
if cmp -s "$js/package-lock.json" "$js/node_modules/.installed-package-lock.json" \
    && [ -d "$js/node_modules/@bytecodealliance/componentize-js" ]; then
    echo "templates: componentize-js already installed in $js/node_modules"
else
    need node
    need npm
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$js/package-lock.json" "$js/node_modules/.installed-package-lock.json"
    echo "templates: installed componentize-js into $js/node_modules"
fi
