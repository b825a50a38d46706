#!/usr/bin/env bash
# The demo on CPU: synthetic TEKNOFEST-layout data -> conversion -> verification -> plans and
# preprocessing -> training U-Net on fold 0 (with the fold's validation and summary.json).
# Everything it writes goes to demo_output/ (ignored by git); run it again to resume or redo nothing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/bootstrap.sh"

work="$repo/demo_output"
export SDMC_raw="$work/raw_data" SDMC_preprocessed="$work/preprocessed" \
       SDMC_results="$work/results" SDMC_weights="$work/weights"
mkdir -p "$work"

echo "== 1/5 synthetic Stroke2021 release (TEKNOFEST layout) -> $work/teknofest2021"
sdmc_make_synthetic -o "$work/teknofest2021" --patients 24 --seed 0 --size 256
echo "== 2/5 conversion -> $SDMC_raw/Dataset2021_Stroke2021"
sdmc_convert_stroke2021 -i "$work/teknofest2021" -d 2021
echo "== 3/5 verification"
sdmc_verify_dataset -d 2021
echo "== 4/5 fingerprint, plans, splits and preprocessing -> $SDMC_preprocessed/Dataset2021_Stroke2021"
sdmc_plan_and_preprocess -d 2021 --cpu
echo "== 5/5 training UNetTrainer on fold 0 (CPU plan: a few minutes) -> $SDMC_results"
sdmc_train 2021 2d 0 -tr UNetTrainer --c
fold="$SDMC_results/Dataset2021_Stroke2021/UNetTrainer__sdmcPlans__2d/fold_0"
python - "$fold/validation/summary.json" <<'PYTHON'
import json, sys
block = json.load(open(sys.argv[1]))["stroke2021"]
print("fold 0 validation (Stroke2021 protocol):")
for metric in ("DSC", "IoU", "mIoU"):
    print(f"  {metric:5s} " + "  ".join(f"{name} {value:.3f}" if value is not None else f"{name} n/a"
                                      for name, value in block[metric].items()))
print("  slices with the class:", block["n_slices"])
PYTHON
echo "demo finished: conversion report $SDMC_raw/Dataset2021_Stroke2021/conversion_report.json,"
echo "plans $SDMC_preprocessed/Dataset2021_Stroke2021/sdmcPlans.json (fields explained in docs/plans.md),"
echo "training curves $fold/progress.png, validation $fold/validation/summary.json"
