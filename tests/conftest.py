import os
from pathlib import Path

import pytest

# CI clones the repository with the project's shared/ folder beside it.
SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_SAMPLES = SHARED / "real_samples" / "teknofest2021"


@pytest.fixture(scope="session")
def real_samples() -> Path:
    if not REAL_SAMPLES.is_dir():
        pytest.fail(f"the real TEKNOFEST samples are expected in {REAL_SAMPLES} (shared/ beside the repository)")
    return REAL_SAMPLES


@pytest.fixture(autouse=True)
def isolated_paths(tmp_path, monkeypatch):
    """No test may read or write the user's data folders."""
    for variable in ("SDMC_raw", "SDMC_preprocessed", "SDMC_results", "SDMC_weights"):
        monkeypatch.setenv(variable, str(tmp_path / variable))


def make_preprocessed_dataset(root: Path, n_patients: int, seed: int, size: int, *plan_arguments: str) -> Path:
    """Synthetic release -> raw dataset -> plans and preprocessed data, under `root`.

    For module-scoped fixtures, which cannot use monkeypatch: the path variables are set for
    the planning command only and restored afterwards.
    """
    from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release
    from sdmcunet.dataset_conversion.synthetic import make_synthetic_dataset
    from sdmcunet.experiment_planning import plan_and_preprocess

    make_synthetic_dataset(root / "release", n_patients=n_patients, seed=seed, size=size, progress=False)
    convert_release(root / "release", 2021, root / "raw")
    saved = {key: os.environ.get(key) for key in ("SDMC_raw", "SDMC_preprocessed")}
    os.environ.update(SDMC_raw=str(root / "raw"), SDMC_preprocessed=str(root / "preprocessed"))
    try:
        assert plan_and_preprocess.main(["-d", "2021", "-np", "1", *plan_arguments]) == 0
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})
    return root / "preprocessed" / "Dataset2021_Stroke2021"
