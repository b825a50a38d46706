#!/usr/bin/env bash
# The demo on CPU: synthetic TEKNOFEST-layout data -> conversion -> verification -> plans and
# preprocessing (a fifth of the patients held out) -> training U-Net, the mask autoencoder and
# SDMC-Seg on fold 0 -> prediction of the held-out slices -> evaluation -> model selection -> report.
# A quarter of 48 patients is held out, so that each lesion class of the held-out slices lies on
# several slices of at least three patients; every score is printed with its 95% interval over patients.
# Everything it writes goes to demo_output/ (ignored by git); run it again to resume or redo nothing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/bootstrap.sh"

work="$repo/demo_output"
export SDMC_raw="$work/raw_data" SDMC_preprocessed="$work/preprocessed" \
       SDMC_results="$work/results" SDMC_weights="$work/weights"
mkdir -p "$work"

dataset="Dataset2021_Stroke2021"
raw="$SDMC_raw/$dataset"
echo "== 1/11 synthetic Stroke2021 release (TEKNOFEST layout) -> $work/teknofest2021"
sdmc_make_synthetic -o "$work/teknofest2021" --patients 48 --seed 0 --size 256
echo "== 2/11 conversion -> $raw"
sdmc_convert_stroke2021 -i "$work/teknofest2021" -d 2021
echo "== 3/11 verification"
sdmc_verify_dataset -d 2021
echo "== 4/11 hold out a quarter of the patients (imagesTs/labelsTs); fingerprint, plans, splits, preprocessing"
sdmc_plan_and_preprocess -d 2021 --cpu --holdout_fraction 0.25
echo "== 5/11 training UNetTrainer on fold 0 (CPU plan: a few minutes) -> $SDMC_results"
sdmc_train 2021 2d 0 -tr UNetTrainer --c --npz
echo "== 6/11 training the mask autoencoder on fold 0 (MaskAutoencoderTrainer; CPU plans start from random weights)"
sdmc_train 2021 2d 0 -tr MaskAutoencoderTrainer --c
echo "== 7/11 training SDMC-Seg on fold 0 (SDMCFinetunedTrainer: single-step latent diffusion)"
sdmc_train 2021 2d 0 -tr SDMCFinetunedTrainer --c --npz
for trainer in UNetTrainer SDMCFinetunedTrainer; do
  echo "== 8/11 $trainer: predicting the held-out slices -> $work/predictions/$trainer"
  sdmc_predict -i "$raw/imagesTs" -o "$work/predictions/$trainer" -d 2021 -tr "$trainer" -f 0 --overlays
  echo "== 9/11 $trainer: evaluating the held-out predictions (Stroke2021 protocol)"
  sdmc_evaluate -ref "$raw/labelsTs" -pred "$work/predictions/$trainer" -o "$work/predictions/$trainer/summary.json"
done
echo "== 10/11 model selection on the fold-0 validation (models and their ensemble, small-component removal)"
sdmc_find_best_configuration -d 2021 -f 0
echo "== 11/11 comparison report"
sdmc_report -d 2021
python - "$work/predictions" <<'PYTHON'
import json, sys
from pathlib import Path
FEW_SLICES, FEW_PATIENTS = 5, 3  # below these a class score says little, and the demo says so
for trainer in ("UNetTrainer", "SDMCFinetunedTrainer"):
    summary = json.loads((Path(sys.argv[1]) / trainer / "summary.json").read_text())
    block, patients = summary["stroke2021"], summary["patients"]
    intervals = patients["ci95"] or {}
    print(f"{trainer} on the held-out slices (Stroke2021 protocol), {patients['n_patients']} patients; "
          f"slices with the class: {block['n_slices']}; [95% interval over patients]")
    for metric in ("DSC", "IoU", "mIoU"):
        cells = []
        for name, value in block[metric].items():
            interval = intervals.get(metric, {}).get(name)
            cells.append(f"{name} n/a" if value is None else f"{name} {value:.3f}" +
                         (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""))
        print(f"  {metric:5s} " + "  ".join(cells))
    if not intervals:
        print(f"  no intervals: {patients['reason']}")
    few = [name for name, count in block["n_slices"].items() if name != "NS" and count < FEW_SLICES]
    if few or (patients["n_patients"] or 0) < FEW_PATIENTS:
        print(f"  too few held-out slices or patients to judge {', '.join(few) or 'any class'}: read these scores as anecdotes")
PYTHON
results="$SDMC_results/$dataset"
echo "demo finished: conversion report $raw/conversion_report.json,"
echo "plans $SDMC_preprocessed/$dataset/sdmcPlans.json (fields explained in docs/plans.md),"
echo "training curves $results/SDMCFinetunedTrainer__sdmcPlans__2d/fold_0/progress.png,"
echo "held-out predictions and overlays $work/predictions, model selection $results/inference_instructions.txt,"
echo "report $results/report/report.html"
