#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv and installs sdmcunet with the pinned
# CI/test requirements. Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
stamp="$venv/.sdmcunet-installed"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[bootstrap] creating virtual environment $venv"
    "$python" -m venv "$venv"
fi
# Re-install only when the requirements or setup.py changed since the last install.
want="$(cat "$repo/setup.py" "$repo"/requirements/*.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[bootstrap] installing sdmcunet and its pinned requirements (torch CPU build)"
    pip_install() {
        # this machine's pip configuration names index folders that may not exist: hide that noise
        "$venv/bin/python" -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2)
    }
    # torch first, exactly pinned, so that no other package can pull a CUDA build
    pip_install -c "$repo/requirements/constraints.txt" torch
    pip_install -c "$repo/requirements/constraints.txt" -r "$repo/requirements/test.txt" -e "$repo"
    pip_install --no-deps -r "$repo/requirements/nnunet-nodeps.txt"
    if "$venv/bin/python" -m pip show --quiet torchvision 2>/dev/null; then
        echo "[bootstrap] torchvision is installed and breaks diffusers with the CPU torch; removing it"
        "$venv/bin/python" -m pip uninstall --yes --quiet torchvision
    fi
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
