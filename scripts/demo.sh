#!/usr/bin/env bash
# The demo on CPU: synthetic TEKNOFEST-layout data -> conversion -> verification -> plans and
# preprocessing -> training U-Net, the mask autoencoder and SDMC-Seg on fold 0 (each with the
# fold's validation and summary.json).
# Everything it writes goes to demo_output/ (ignored by git); run it again to resume or redo nothing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/bootstrap.sh"

work="$repo/demo_output"
export SDMC_raw="$work/raw_data" SDMC_preprocessed="$work/preprocessed" \
       SDMC_results="$work/results" SDMC_weights="$work/weights"
mkdir -p "$work"

echo "== 1/7 synthetic Stroke2021 release (TEKNOFEST layout) -> $work/teknofest2021"
sdmc_make_synthetic -o "$work/teknofest2021" --patients 24 --seed 0 --size 256
echo "== 2/7 conversion -> $SDMC_raw/Dataset2021_Stroke2021"
sdmc_convert_stroke2021 -i "$work/teknofest2021" -d 2021
echo "== 3/7 verification"
sdmc_verify_dataset -d 2021
echo "== 4/7 fingerprint, plans, splits and preprocessing -> $SDMC_preprocessed/Dataset2021_Stroke2021"
sdmc_plan_and_preprocess -d 2021 --cpu
echo "== 5/7 training UNetTrainer on fold 0 (CPU plan: a few minutes) -> $SDMC_results"
sdmc_train 2021 2d 0 -tr UNetTrainer --c
echo "== 6/7 training the mask autoencoder on fold 0 (MaskAutoencoderTrainer; CPU plans start from random weights)"
sdmc_train 2021 2d 0 -tr MaskAutoencoderTrainer --c
echo "== 7/7 training SDMC-Seg on fold 0 (SDMCFinetunedTrainer: single-step latent diffusion)"
sdmc_train 2021 2d 0 -tr SDMCFinetunedTrainer --c
python - "$SDMC_results/Dataset2021_Stroke2021" <<'PYTHON'
import json, sys
from pathlib import Path
for trainer in ("UNetTrainer", "MaskAutoencoderTrainer", "SDMCFinetunedTrainer"):
    summary = json.loads((Path(sys.argv[1]) / f"{trainer}__sdmcPlans__2d" / "fold_0" / "validation" / "summary.json").read_text())
    what = "mask reconstruction" if trainer == "MaskAutoencoderTrainer" else "segmentation"
    if "stroke2021" not in summary:
        print(f"{trainer}: {summary.get('note')}")
        continue
    block = summary["stroke2021"]
    print(f"{trainer} fold 0 validation ({what}, Stroke2021 protocol), slices with the class {block['n_slices']}:")
    for metric in ("DSC", "IoU", "mIoU"):
        print(f"  {metric:5s} " + "  ".join(f"{name} {value:.3f}" if value is not None else f"{name} n/a"
                                          for name, value in block[metric].items()))
PYTHON
fold="$SDMC_results/Dataset2021_Stroke2021/SDMCFinetunedTrainer__sdmcPlans__2d/fold_0"
echo "demo finished: conversion report $SDMC_raw/Dataset2021_Stroke2021/conversion_report.json,"
echo "plans $SDMC_preprocessed/Dataset2021_Stroke2021/sdmcPlans.json (fields explained in docs/plans.md),"
echo "training curves $fold/progress.png, validation $fold/validation/summary.json"
