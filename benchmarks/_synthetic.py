"""Set-up shared by the benchmarks: a synthetic dataset, converted, planned and preprocessed."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release
from sdmcunet.dataset_conversion.synthetic import make_synthetic_dataset
from sdmcunet.evaluation.statistics import (
    BOOTSTRAP_DRAWS, BOOTSTRAP_SEED, case_table, patient_intervals, patients_from_raw_dataset,
)
from sdmcunet.experiment_planning import plan_and_preprocess
from sdmcunet.utils.errors import SDMCError

DATASET = "Dataset2021_Stroke2021"
# Patients of the quality benchmarks (bench_training, bench_sdmc): about 1,900 slices, a third of
# the real release. The fold-0 validation then holds about 60 ischemic and 70 hemorrhagic slices,
# so that one slice moves a class mean by under 0.02 (with 40 patients it held 6 and 8).
QUALITY_PATIENTS = 300


def planned_synthetic_dataset(folder: Path, n_patients: int, size: int) -> tuple[Path, dict]:
    """CPU plans and preprocessed data under `folder`; returns the preprocessed dataset and the path variables."""
    environment = {"SDMC_raw": str(folder / "raw"), "SDMC_preprocessed": str(folder / "preprocessed"),
                   "SDMC_results": str(folder / "results")}
    os.environ.update(environment)
    make_synthetic_dataset(folder / "release", n_patients=n_patients, seed=1, size=size, progress=False)
    convert_release(folder / "release", 2021, folder / "raw")
    with contextlib.redirect_stdout(sys.stderr):  # a benchmark's standard output is its JSON alone
        plan_and_preprocess.main(["-d", "2021", "--cpu", "-np", str(os.cpu_count() or 1)])
    return folder / "preprocessed" / DATASET, environment


def patient_interval(summary_path: Path, raw_dataset: Path, draws: int = BOOTSTRAP_DRAWS,
                     seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """95% bootstrap interval of the validation mean DSC over patients (sdmcunet.evaluation.statistics),
    rounded to 3 decimals; None when the validation holds no lesion at all."""
    table = case_table(json.loads(summary_path.read_text())["metric_per_case"])
    patients = patients_from_raw_dataset(raw_dataset, table.cases)
    if patients.patient_of is None:
        raise SDMCError(patients.reason)
    interval = patient_intervals(table, patients.patient_of, draws, seed)["DSC"]["Mean"]
    return None if interval is None else [round(bound, 3) for bound in interval]


def run_minutes(command: str, *arguments: str, environment: dict) -> float:
    """Run one of the package's commands (output discarded); its wall time in minutes."""
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / command), *arguments], env=os.environ | environment, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - start) / 60


def read_stroke2021(summary_path: Path) -> dict:
    return json.loads(summary_path.read_text())["stroke2021"]
