"""Set-up shared by the benchmarks: a synthetic dataset, converted, planned and preprocessed."""

import os
from pathlib import Path

from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release
from sdmcunet.dataset_conversion.synthetic import make_synthetic_dataset
from sdmcunet.experiment_planning import plan_and_preprocess

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
