"""Where a trained model lives, and what makes its folder self-contained for inference."""

from pathlib import Path

from sdmcunet import paths
from sdmcunet.utils.files import atomic_write_bytes, atomic_write_json

DESCRIPTION_FILES = ("dataset.json", "dataset_fingerprint.json")


def model_folder(dataset_name: str, trainer_name: str, plans_name: str, configuration: str) -> Path:
    return paths.results_root() / dataset_name / f"{trainer_name}__{plans_name}__{configuration}"


def fold_folder(model: Path, fold: int | str) -> Path:
    return model / f"fold_{fold}"


def write_model_description(model: Path, preprocessed_folder: Path, plans: dict) -> None:
    """Copy plans, dataset.json and fingerprint next to the folds (nnU-Net's self-contained model folder)."""
    model.mkdir(parents=True, exist_ok=True)
    atomic_write_json(model / "plans.json", plans)
    for name in DESCRIPTION_FILES:
        atomic_write_bytes(model / name, (preprocessed_folder / name).read_bytes())
