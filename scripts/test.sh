#!/usr/bin/env bash
# The test suite, CPU only, no network: installs what it needs, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k overlay).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/bootstrap.sh"
# The report test renders the HTML in headless Chromium: install Debian's package where apt-get
# can (root); when it cannot (no root, no network), that test skips and the suite goes on.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[test] installing chromium (for the HTML report test)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends chromium \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }; } >/dev/null 2>&1 \
        || echo "[test] chromium could not be installed: the HTML rendering test will be skipped"
fi
cd "$repo"
python -m pytest -q "$@" tests
