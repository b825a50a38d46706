"""Folders of label maps (one 2D slice per file, PNG or NIfTI): finding them and reading them safely.

Prediction folders also hold `{case}.npz` probabilities and a `summary.json`; only the files
with a label-map ending count, and hidden files (unfinished atomic writes) never do.
"""

from pathlib import Path

import numpy as np

from sdmcunet.imageio import DEFAULT_GEOMETRY, ImageGeometry, read_label_slice_with_geometry
from sdmcunet.labels import LABELS
from sdmcunet.utils.errors import SDMCError

# Longest first, so that "a.nii.gz" is case "a" and not "a.nii".
LABEL_MAP_ENDINGS = (".nii.gz", ".nii", ".png")


def label_map_ending(file_name: str) -> str | None:
    """The label-map ending of a file name (".png", ".nii.gz", ".nii"), or None."""
    lowered = file_name.lower()
    return next((ending for ending in LABEL_MAP_ENDINGS if lowered.endswith(ending)), None)


def case_name(file_name: str) -> str:
    """The case a label-map file holds: its name without the ending."""
    ending = label_map_ending(file_name)
    return file_name[: -len(ending)] if ending else file_name


def label_map_files(folder: Path) -> dict[str, Path]:
    """Every label-map file of `folder`, by file name; an error if the folder does not exist."""
    if not folder.is_dir():
        raise SDMCError(f"{folder}: folder not found")
    return {path.name: path for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.startswith(".") and label_map_ending(path.name)}


def find_label_map(folder: Path, case: str) -> Path | None:
    """The label-map file of `case` in `folder`, whatever its format, or None."""
    return next((folder / f"{case}{ending}" for ending in LABEL_MAP_ENDINGS if (folder / f"{case}{ending}").is_file()),
                None)


def read_label_map(path: Path, num_classes: int = len(LABELS)) -> tuple[np.ndarray, tuple[float, float]]:
    """`read_label_map_with_geometry` with the (row, column) spacing alone."""
    values, geometry = read_label_map_with_geometry(path, num_classes)
    return values, geometry.spacing


def read_label_map_with_geometry(path: Path, num_classes: int = len(LABELS)) -> tuple[np.ndarray, ImageGeometry]:
    """A label map as uint8 and where its pixels lie (spacing 1 mm for PNG, which stores none); an error
    naming the file unless its values are whole numbers in 0..num_classes-1."""
    values, geometry = read_label_slice_with_geometry(path)
    if not np.issubdtype(values.dtype, np.integer):
        if not np.array_equal(values, np.round(values)):
            raise SDMCError(f"{path}: not a label map (holds non-integer values, dtype {values.dtype})")
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        unexpected = sorted(set(np.unique(values).tolist()) - set(range(num_classes)))
        raise SDMCError(f"{path}: labels must lie in 0..{num_classes - 1}, found {unexpected}")
    return values.astype(np.uint8), geometry or DEFAULT_GEOMETRY
