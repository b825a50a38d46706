"""The qualitative grid: a few validation slices, the CT, the reference and every model's prediction.

The slices come from one cross-validation fold (the lowest one that most models have predicted),
so every model is shown on cases it never trained on. The choice is deterministic: for each kind
of slice ("ischemic" only, "hemorrhagic" only, "both", "no lesion"), the one of median lesion
area (a typical slice rather than the easiest one).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sdmcunet.evaluation.metrics import NUM_CLASSES
from sdmcunet.imageio import read_label_slice
from sdmcunet.inference.overlays import display_image
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC
from sdmcunet.raw_dataset import DatasetJson, image_file_name, label_file_name, read_raw_image
from sdmcunet.reporting.collect import Results
from sdmcunet.results.layout import references_folder
from sdmcunet.results.trained_model import FoldResult, TrainedModel
from sdmcunet.reporting.document import Figure, Section
from sdmcunet.reporting.figures import image_grid, overlay


@dataclass(frozen=True)
class SliceCategory:
    name: str
    holds: Callable[[np.ndarray], bool]  # class areas -> whether a slice is of this kind
    size: Callable[[np.ndarray], int]  # class areas -> the lesion area that orders slices of this kind


SLICE_CATEGORIES = (
    SliceCategory("ischemic", lambda areas: areas[ISCHEMIC] > 0 and areas[HEMORRHAGIC] == 0,
                  lambda areas: areas[ISCHEMIC]),
    SliceCategory("hemorrhagic", lambda areas: areas[HEMORRHAGIC] > 0 and areas[ISCHEMIC] == 0,
                  lambda areas: areas[HEMORRHAGIC]),
    SliceCategory("both", lambda areas: areas[ISCHEMIC] > 0 and areas[HEMORRHAGIC] > 0,
                  lambda areas: areas[ISCHEMIC] + areas[HEMORRHAGIC]),
    SliceCategory("no lesion", lambda areas: areas[ISCHEMIC] == 0 and areas[HEMORRHAGIC] == 0, lambda areas: 0),
)
LESION_CATEGORIES = SLICE_CATEGORIES[:3]


def class_areas(label_map: np.ndarray) -> np.ndarray:
    """Pixels of each class in a label map."""
    return np.bincount(np.asarray(label_map, dtype=np.int64).ravel(), minlength=NUM_CLASSES)


def choose_slices(areas: dict[str, np.ndarray], categories=SLICE_CATEGORIES) -> list[tuple[str, str]]:
    """(case, category) pairs: per category present, its slice of median lesion area (ties by name)."""
    chosen = []
    for category in categories:
        candidates = sorted((category.size(case_areas), case) for case, case_areas in areas.items()
                            if category.holds(case_areas))
        if candidates:
            chosen.append((candidates[len(candidates) // 2][1], category.name))
    return chosen


def predicted_cases(fold: FoldResult, file_ending: str) -> set[str]:
    return {path.name[: -len(file_ending)] for path in fold.validation.glob(f"*{file_ending}")}


def fold_to_show(models: list[TrainedModel], file_ending: str) -> tuple[str, dict[str, FoldResult]] | None:
    """The lowest cross-validation fold predicted by the most models, and those models' folds."""
    by_fold: dict[str, dict[str, FoldResult]] = {}
    for model in models:
        for fold in model.finished_folds():
            if fold.is_cross_validation and predicted_cases(fold, file_ending):
                by_fold.setdefault(fold.name, {})[model.trainer] = fold
    if not by_fold:
        return None
    name = max(sorted(by_fold, key=int), key=lambda fold_name: len(by_fold[fold_name]))
    return name, by_fold[name]


def slice_picture(raw_folder: Path | None, case: str, dataset: DatasetJson) -> np.ndarray | None:
    """The slice for display, uint8: CT in the brain window, else the PNG min-max scaled."""
    if raw_folder is None:
        return None
    channels = {name.upper(): channel for channel, name in dataset.channel_names.items()}
    channel = channels.get("CT", channels.get("PNG", 0))
    path = raw_folder / "imagesTr" / image_file_name(case, channel, dataset.file_ending)
    if not path.is_file():
        return None
    return display_image(read_raw_image(path)[0], "CT" in channels)


def _slice_panels(case: str, reference: np.ndarray, folds: dict[str, FoldResult], image: np.ndarray | None,
                 file_ending: str) -> list[np.ndarray]:
    """CT alone, then the reference and each model's prediction over it."""
    predictions = [read_label_slice(fold.validation / label_file_name(case, file_ending))[0] for fold in folds.values()]
    return [overlay(image, np.zeros(reference.shape, dtype=np.uint8)),
            *(overlay(image, label_map) for label_map in [reference, *predictions])]


def qualitative_section(results: Results) -> Section:
    section = Section("Qualitative results")
    ending = results.dataset.file_ending
    shown = fold_to_show(results.segmentation_models, ending)
    if shown is None:
        section.blocks.append("There is no qualitative comparison: no model has validation predictions "
                              "(`fold_*/validation/`).")
        return section
    if results.preprocessed_folder is None:
        section.blocks.append(f"There is no qualitative comparison: the reference label maps are missing (no "
                              f"preprocessed dataset {results.dataset_id} in the SDMC_preprocessed folder).")
        return section
    fold_name, folds = shown
    references_root = references_folder(results.preprocessed_folder)
    references = {case: references_root / label_file_name(case, ending)
                  for case in sorted(set.intersection(*(predicted_cases(fold, ending) for fold in folds.values())))}
    # only the class areas are kept: a fold of the full dataset holds over a thousand 512x512 slices
    chosen = choose_slices({case: class_areas(read_label_slice(path)[0]) for case, path in references.items()
                            if path.is_file()})
    if not chosen:
        section.blocks.append(f"There is no qualitative comparison: {references_root} holds no reference label map "
                              f"of the validation cases of fold {fold_name}.")
        return section
    panels, without_image = [], []
    for case, _ in chosen:
        image = slice_picture(results.raw_folder, case, results.dataset)
        if image is None:
            without_image.append(case)
        panels.append(_slice_panels(case, read_label_slice(references[case])[0], folds, image, ending))
    caption = (f"Validation slices of fold {fold_name} (one per lesion kind, of median lesion area): the CT (brain "
               f"window 0-80 HU, or the PNG), the reference and each model's prediction.")
    missing_models = [model.trainer for model in results.segmentation_models if model.trainer not in folds]
    if missing_models:
        caption += f" Not shown (no validation predictions for fold {fold_name}): {', '.join(missing_models)}."
    if without_image:
        caption += f" No raw image found for {', '.join(without_image)}: drawn on black."
    row_titles = [f"{case} ({category})" for case, category in chosen]
    section.blocks.append(Figure("qualitative", image_grid(panels, ["CT", "reference", *folds], row_titles), caption))
    return section
