"""Set-up shared by the benchmarks: a synthetic dataset, converted, planned and preprocessed."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release
from sdmcunet.dataset_conversion.synthetic import make_synthetic_dataset
from sdmcunet.experiment_planning import plan_and_preprocess
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC

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
    plan_and_preprocess.main(["-d", "2021", "--cpu", "-np", str(os.cpu_count() or 1)])
    return folder / "preprocessed" / DATASET, environment


def patient_interval(summary_path: Path, raw_dataset: Path, draws: int = 2000, seed: int = 0) -> list[float] | None:
    """95% bootstrap interval of the validation mean DSC, resampling patients with replacement.

    The slices of one patient are not independent (a lesion spans several of them, and one faint
    lesion missed costs a class mean several points), so the interval resamples whole patients.
    As in the summary's "Mean", a class without slices in a draw is left out of its mean; None
    when the validation holds no lesion at all.
    """
    patient_of = {case: info["patient_id"] for case, info in
                  json.loads((raw_dataset / "case_info.json").read_text()).items()}
    lesion_labels = (str(ISCHEMIC), str(HEMORRHAGIC))  # the summary's per-case keys
    per_patient: dict[str, list[list[float]]] = {}
    for case in json.loads(summary_path.read_text())["metric_per_case"]:
        scores = per_patient.setdefault(patient_of[case["case"]], [[] for _ in lesion_labels])
        for position, label in enumerate(lesion_labels):
            if case["metrics"][label]["n_ref"]:
                scores[position].append(case["metrics"][label]["Dice"])
    patients = list(per_patient.values())
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(draws):
        drawn = [patients[i] for i in rng.integers(len(patients), size=len(patients))]
        class_means = [np.mean(values) for position in range(len(lesion_labels))
                       if (values := [dice for scores in drawn for dice in scores[position]])]
        if class_means:
            means.append(np.mean(class_means))
    if not means:
        return None
    return [round(float(bound), 3) for bound in np.percentile(means, [2.5, 97.5])]


def run_minutes(command: str, *arguments: str, environment: dict) -> float:
    """Run one of the package's commands (output discarded); its wall time in minutes."""
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / command), *arguments], env=os.environ | environment, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - start) / 60


def read_stroke2021(summary_path: Path) -> dict:
    return json.loads(summary_path.read_text())["stroke2021"]
