#!/usr/bin/env bash
# Builds, once, the virtual environment OpenFlamingo's own MMC4 loader runs in for the client
# tests (tests/clients/test_openflamingo.py), and prints its path. It is cached outside the
# repository, keyed by the pinned set: $M3W_CLIENTS_CACHE (default ~/.cache/m3w-clients).
# open-flamingo needs transformers < 5 and webdataset < 1, which the project's own set excludes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/openflamingo-requirements.txt"
python="${PYTHON:-python3.11}"
cache="${M3W_CLIENTS_CACHE:-$HOME/.cache/m3w-clients}"
venv="$cache/openflamingo-venv"
stamp="$venv/.m3w-$(cat "$req" "$0" | sha256sum | cut -c1-16)"
mkdir -p "$cache"
exec 9>"$cache/openflamingo-venv.lock"
flock 9  # two test runs at once build it once
if [ ! -e "$stamp" ]; then
    start=$(date +%s)
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q -r "$req" >&2
    "$venv/bin/python" -m pip install -q --no-deps open-flamingo==2.0.1 >&2
    touch "$stamp"
    echo "openflamingo-venv: built $venv in $(( $(date +%s) - start )) s" >&2
fi
echo "$venv"
