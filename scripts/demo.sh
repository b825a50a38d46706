#!/usr/bin/env bash
# The demo on CPU: synthetic TEKNOFEST-layout data -> conversion -> verification -> plans and
# preprocessing.
# Everything it writes goes to demo_output/ (ignored by git); run it again to resume or redo nothing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/bootstrap.sh"

work="$repo/demo_output"
export SDMC_raw="$work/raw_data" SDMC_preprocessed="$work/preprocessed" \
       SDMC_results="$work/results" SDMC_weights="$work/weights"
mkdir -p "$work"

echo "== 1/4 synthetic Stroke2021 release (TEKNOFEST layout) -> $work/teknofest2021"
sdmc_make_synthetic -o "$work/teknofest2021" --patients 24 --seed 0 --size 256
echo "== 2/4 conversion -> $SDMC_raw/Dataset2021_Stroke2021"
sdmc_convert_stroke2021 -i "$work/teknofest2021" -d 2021
echo "== 3/4 verification"
sdmc_verify_dataset -d 2021
echo "== 4/4 fingerprint, plans, splits and preprocessing -> $SDMC_preprocessed/Dataset2021_Stroke2021"
sdmc_plan_and_preprocess -d 2021 --cpu
echo "demo finished: conversion report $SDMC_raw/Dataset2021_Stroke2021/conversion_report.json,"
echo "plans $SDMC_preprocessed/Dataset2021_Stroke2021/sdmcPlans.json (fields explained in docs/plans.md)"
