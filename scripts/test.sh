#!/usr/bin/env bash
# The test suite, CPU only, no network: installs what it needs, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k overlay).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/bootstrap.sh"
cd "$repo"
python -m pytest -q "$@" tests
