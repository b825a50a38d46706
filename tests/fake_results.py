"""Tiny fake datasets and trained-model folders for the evaluation and ensembling tests (no training).

The layout is the one `sdmc_train` writes: references in `$SDMC_preprocessed/{DATASET}/
gt_segmentations/`, folds in its `splits_final.json`, and per fold
`$SDMC_results/{DATASET}/{trainer}__sdmcPlans__2d/fold_{f}/validation/{case}{ending}` with
optional `{case}.npz` probabilities.
"""

import os
from pathlib import Path

import numpy as np

from sdmcunet.imageio import write_label_map
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC, LABELS
from sdmcunet.raw_dataset import make_dataset_json
from sdmcunet.utils.files import atomic_write_json

DATASET = "Dataset2021_Stroke2021"
NIFTI = ".nii.gz"


def label_map(shape: tuple[int, int] = (16, 16), **regions: tuple[slice, slice]) -> np.ndarray:
    """A uint8 label map of zeros with IS / HS rectangles, e.g. label_map(IS=np.s_[2:5, 2:5])."""
    labels = np.zeros(shape, dtype=np.uint8)
    for name, region in regions.items():
        labels[region] = {"IS": ISCHEMIC, "HS": HEMORRHAGIC}[name]
    return labels


def write_label_maps(folder: Path, maps: dict[str, np.ndarray], ending: str = ".png",
                     spacing: tuple[float, float] = (1.0, 1.0)) -> Path:
    for case, labels in maps.items():
        write_label_map(labels, folder / f"{case}{ending}", spacing)
    return folder


def confident(labels: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """(classes, rows, columns) probabilities giving each pixel's label `confidence`, the rest shared."""
    rest = (1 - confidence) / (len(LABELS) - 1)
    probabilities = np.full((len(LABELS), *labels.shape), rest, dtype=np.float32)
    np.put_along_axis(probabilities, labels[None].astype(np.int64), confidence, axis=0)
    return probabilities


def make_dataset(references: dict[str, np.ndarray], folds: list[list[str]], ending: str = NIFTI) -> Path:
    """The preprocessed folder with dataset.json, splits_final.json and the references."""
    folder = Path(os.environ["SDMC_preprocessed"]) / DATASET
    atomic_write_json(folder / "dataset.json", make_dataset_json({0: "CT"}, LABELS, len(references), ending))
    atomic_write_json(folder / "splits_final.json", [
        {"train": sorted(set(references) - set(fold)), "val": sorted(fold)} for fold in folds])
    write_label_maps(folder / "gt_segmentations", references, ending, spacing=(0.5, 0.8))
    return folder


def model_folder(trainer: str) -> Path:
    return Path(os.environ["SDMC_results"]) / DATASET / f"{trainer}__sdmcPlans__2d"


def make_model(trainer: str, folds: list[list[str]], probabilities: dict[str, np.ndarray], ending: str = NIFTI,
               with_npz: bool = True) -> Path:
    """A model folder whose fold validation folders hold the argmax label maps (and npz) of `probabilities`."""
    folder = model_folder(trainer)
    for fold, cases in enumerate(folds):
        validation = folder / f"fold_{fold}" / "validation"
        write_label_maps(validation, {case: probabilities[case].argmax(0).astype(np.uint8) for case in cases}, ending,
                         spacing=(0.5, 0.8))
        for case in cases if with_npz else ():
            np.savez_compressed(validation / f"{case}.npz", probabilities=probabilities[case].astype(np.float16))
    return folder
