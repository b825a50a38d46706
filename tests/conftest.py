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
