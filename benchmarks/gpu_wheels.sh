#!/usr/bin/env bash
# Download into .whl/ (repository root, ignored by git) the wheels benchmarks/gpu_check.py needs on the
# GPU machine, which has Python 3.12 and torch 2.11 with CUDA but no network (its packages:
# /work/.library/device/KINDS.md). .whl travels there with the working tree (64 MiB in all), so this
# fails above 60 MiB.
#
# The device lacks diffusers, monai and batchgenerators (versions as in requirements/constraints.txt).
# Of what they require (Requires-Dist, printed below), the device has numpy, scipy, scikit-image,
# scikit-learn, pandas, threadpoolctl, pillow, filelock, huggingface-hub (1.33; diffusers needs >= 1.32),
# regex, requests, safetensors (0.8) and torch. It lacks three, none of which is ever imported:
#   future, unittest2 (batchgenerators): its `from builtins import ...` is Python 3's own module;
#   importlib_metadata (diffusers): imported on Python < 3.8 only.
#
#     bash benchmarks/gpu_wheels.sh          # with the project's virtual environment active (for pip)
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT_MIB=60
PACKAGES=(diffusers monai batchgenerators)
pinned=()
for package in "${PACKAGES[@]}"; do
    pinned+=("$(grep -i "^${package}==" requirements/constraints.txt)")
done

mkdir -p .whl
rm -f .whl/*.whl  # one version of each: two would stop the installation on the device
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pinned[@]}"

for wheel in .whl/*.whl; do
    echo "$(basename "$wheel") requires:"
    python3 - "$wheel" <<'PYTHON'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    metadata = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
    for line in wheel.read(metadata).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            print("   ", line.removeprefix("Requires-Dist: "))
PYTHON
done

total=$(cat .whl/*.whl | wc -c)
awk -v bytes="$total" -v wheels="$(ls .whl/*.whl | wc -l)" \
    'BEGIN { printf "total: %d bytes (%.1f MiB) in %d wheels\n", bytes, bytes / 1048576, wheels }'
if (( total > LIMIT_MIB * 1048576 )); then
    echo "error: the wheels exceed ${LIMIT_MIB} MiB" >&2
    exit 1
fi
