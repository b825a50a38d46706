import os
import threading
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
from hypothesis import HealthCheck, settings

# Fuzzing budgets (tests/test_fuzz.py): "ci", the default, is quick and derandomised, so every run
# tries the same inputs; `pytest --hypothesis-profile=long tests/test_fuzz.py` tries many more, with
# a random seed each run and the example database in .hypothesis/ to replay what it found.
_FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", max_examples=100, derandomize=True, database=None, **_FUZZ)
settings.register_profile("long", max_examples=3000, **_FUZZ)
settings.load_profile("ci")


def pytest_addoption(parser):
    parser.addoption("--run-nnunet", action="store_true",
                     help="tests/test_nnunet_trainer.py: also train nnU-Net itself (a few minutes on 2 cores)")
    parser.addoption("--fault-trials", type=int, default=9, metavar="N",
                     help="tests/test_faults.py: SIGKILL trials of training (default 9, the CI setting; 100 for a long run); "
                     "preprocessing and prediction get N // 3 each, at least 3")


# Four real TEKNOFEST-2021 slices (PNG and OVERLAY), kept in the repository; see their README.md.
REAL_SAMPLES = Path(__file__).resolve().parent / "data" / "teknofest2021"


@pytest.fixture(scope="session")
def real_samples() -> Path:
    if not REAL_SAMPLES.is_dir():
        pytest.fail(f"the real TEKNOFEST samples are missing: expected in {REAL_SAMPLES}")
    return REAL_SAMPLES


@pytest.fixture(autouse=True)
def isolated_paths(tmp_path, monkeypatch):
    """No test may read or write the user's data folders."""
    for variable in ("SDMC_raw", "SDMC_preprocessed", "SDMC_results", "SDMC_weights"):
        monkeypatch.setenv(variable, str(tmp_path / variable))


@contextmanager
def paths_set(**folders: Path) -> Iterator[None]:
    """The path variables (SDMC_raw=..., ...) set for a block and restored afterwards: for
    module-scoped fixtures, which cannot use monkeypatch."""
    saved = {key: os.environ.get(key) for key in folders}
    os.environ.update({key: str(folder) for key, folder in folders.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})


def make_preprocessed_dataset(root: Path, n_patients: int, seed: int, size: int, *plan_arguments: str) -> Path:
    """Synthetic release -> raw dataset -> plans and preprocessed data, under `root`."""
    from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release
    from sdmcunet.dataset_conversion.synthetic import make_synthetic_dataset
    from sdmcunet.experiment_planning import plan_and_preprocess

    make_synthetic_dataset(root / "release", n_patients=n_patients, seed=seed, size=size, progress=False)
    convert_release(root / "release", 2021, root / "raw")
    with paths_set(SDMC_raw=root / "raw", SDMC_preprocessed=root / "preprocessed"):
        assert plan_and_preprocess.main(["-d", "2021", "-np", "1", *plan_arguments]) == 0
    return root / "preprocessed" / "Dataset2021_Stroke2021"


@pytest.fixture
def file_server(tmp_path) -> Iterator[SimpleNamespace]:
    """An HTTP server on 127.0.0.1 serving the folder `.folder` at `.url`; `.requests` lists the paths asked for."""
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(folder=served, url=f"http://127.0.0.1:{server.server_port}", requests=requests)
    server.shutdown()
    server.server_close()


# One small trained model shared by the prediction tests (tests/test_inference_inputs_outputs.py,
# tests/test_clinical_io.py): UNetTrainer, fold `all`, one iteration, on one synthetic patient whose raw
# images and labels lie at a non-trivial place in space (origin and direction), so that a writer that drops
# the geometry is seen. Its dataset has the channels 0 CT and 1 PNG; the model reads the PNG.
ORIGIN, DIRECTION = (-100.0, 50.0), (-1.0, 0.0, 0.0, 1.0)


def place_in_space(path: Path, origin: tuple = ORIGIN, direction: tuple = DIRECTION) -> None:
    """Rewrite a NIfTI file with another origin and direction (SimpleITK directly: independent of sdmcunet)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=True)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """release/, raw/ (placed at ORIGIN, DIRECTION), preprocessed/ and results/ with one UNet (fold all, with
    validation probabilities) of one synthetic patient."""
    from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release
    from sdmcunet.dataset_conversion.synthetic import make_synthetic_dataset
    from sdmcunet.experiment_planning import plan_and_preprocess
    from sdmcunet.training import run_training

    root = tmp_path_factory.mktemp("inputs_outputs")
    make_synthetic_dataset(root / "release", n_patients=1, seed=11, size=64, progress=False)
    convert_release(root / "release", 2021, root / "raw")
    for path in (root / "raw" / "Dataset2021_Stroke2021").glob("*Tr/*.nii.gz"):
        place_in_space(path)
    with paths_set(SDMC_raw=root / "raw", SDMC_preprocessed=root / "preprocessed", SDMC_results=root / "results"):
        assert plan_and_preprocess.main(["-d", "2021", "-np", "1", "--cpu"]) == 0
        assert run_training.main(["2021", "2d", "all", "-tr", "UNetTrainer", "--npz", "--epochs", "1",
                                  "--iterations_per_epoch", "1", "-num_loader_workers", "0"]) == 0
    return root


