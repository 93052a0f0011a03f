#!/usr/bin/env bash
# Builds app.py into a policy component with componentize-py:
#   ./build.sh [OUT.wasm]      (default: build/block_package_py.wasm)
# Uses `componentize-py` from PATH (pip install -r requirements.txt), else
# the one scripts/test installs (policies/templates/install.sh).
# OPAMP_POLICY_WIT: the WIT folder (default: this repository's wit/).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wit="${OPAMP_POLICY_WIT:-$here/../../../wit}"
out="${1:-$here/build/block_package_py.wasm}"
mkdir -p "$(dirname "$out")"
cd "$here"
if command -v componentize-py >/dev/null; then
    run=(componentize-py)
else
    installed="$here/../../../target/policy-templates/python"
    if [ ! -d "$installed/componentize_py" ]; then
        echo "componentize-py is not installed: run policies/templates/install.sh" \
            "(or pip install -r $here/requirements.txt)" >&2
        exit 1
    fi
    export PYTHONPATH="$installed${PYTHONPATH:+:$PYTHONPATH}"
    run=(python3 -c 'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())')
fi
# `componentize` generates the bindings (wit_world) itself.
"${run[@]}" --wit-path "$wit" --world gateway-policy componentize app --output "$out"
echo "built $out"
