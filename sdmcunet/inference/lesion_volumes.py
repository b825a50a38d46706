"""Lesion volumes of a predicted CT volume: per class, its volume in mL, how many connected lesions
and the largest one: the quantities acted on in stroke care (the automated replacement of the
ABC/2 estimate of haemorrhage volume). With several noise draws of SDMC-Seg, the spread of each
volume over the draws says how certain it is, in mL.

Written per case as `{case}_volumes.json`, and for a whole output folder as `volumes.csv`. A single
slice has no volume (its thickness is not part of a 2D image): only volumes get these files.
"""

import csv
import io
from pathlib import Path

import numpy as np
from scipy import ndimage

from sdmcunet.imageio import ImageGeometry
from sdmcunet.utils.files import atomic_write_bytes, read_json

VOLUMES_SUFFIX = "_volumes.json"
VOLUMES_TABLE = "volumes.csv"
CUBIC_MM_PER_ML = 1000.0
# Lesion voxels touching by a face, an edge or a corner are one lesion (26-connectivity).
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
TABLE_COLUMNS = ("case", "class", "volume_ml", "components", "largest_component_ml", "volume_ml_std_over_samples",
                 "volume_ml_min_over_samples", "volume_ml_max_over_samples", "samples")


def voxel_volume_ml(geometry: ImageGeometry) -> float:
    return float(np.prod(geometry.itk_spacing)) / CUBIC_MM_PER_ML


def class_volumes(label_volume: np.ndarray, voxel_ml: float, labels: dict[str, int]) -> dict[str, dict]:
    """Per lesion class (every label but background): volume_ml, components and largest_component_ml."""
    volumes = {}
    for name, value in labels.items():
        if value == 0:
            continue
        lesion = _around_lesion(label_volume == value)  # labelling a whole volume costs more than its lesions
        components, count = ndimage.label(lesion, structure=CONNECTIVITY)
        largest = int(np.bincount(components.ravel())[1:].max()) if count else 0
        volumes[name] = {"volume_ml": float(lesion.sum()) * voxel_ml, "components": int(count),
                         "largest_component_ml": largest * voxel_ml}
    return volumes


def _around_lesion(lesion: np.ndarray) -> np.ndarray:
    """The smallest box holding every lesion voxel (an empty array when there is none)."""
    box = []
    for axis in range(lesion.ndim):
        present = np.flatnonzero(lesion.any(axis=tuple(other for other in range(lesion.ndim) if other != axis)))
        box.append(slice(present[0], present[-1] + 1) if present.size else slice(0, 0))
    return lesion[tuple(box)]


def volume_report(case: str, label_volume: np.ndarray, geometry: ImageGeometry, labels: dict[str, int],
                  draw_label_volumes: list[np.ndarray] | None = None) -> dict:
    """The content of `{case}_volumes.json`; `draw_label_volumes`: the label volume of each noise draw."""
    voxel_ml = voxel_volume_ml(geometry)
    volumes = class_volumes(label_volume, voxel_ml, labels)
    if draw_label_volumes is not None and len(draw_label_volumes) > 1:
        per_draw = [class_volumes(draw, voxel_ml, labels) for draw in draw_label_volumes]
        for name, entry in volumes.items():
            samples = np.array([draw[name]["volume_ml"] for draw in per_draw])
            entry["over_samples"] = {"samples": len(samples), "mean_ml": float(samples.mean()),
                                     "std_ml": float(samples.std()), "min_ml": float(samples.min()),
                                     "max_ml": float(samples.max())}
    return {"case": case, "voxel_volume_ml": voxel_ml, "spacing_mm": list(geometry.itk_spacing),
            "classes": volumes}


def write_volume_table(folder: Path, reports: list[Path]) -> Path | None:
    """`volumes.csv` in `folder`: one row per case and class, from the `{case}_volumes.json` `reports`; None
    when there are none."""
    rows = []
    for path in sorted(reports):
        report = read_json(path)
        for name, entry in report["classes"].items():
            spread = entry.get("over_samples", {})
            rows.append([report["case"], name, entry["volume_ml"], entry["components"], entry["largest_component_ml"],
                         spread.get("std_ml", ""), spread.get("min_ml", ""), spread.get("max_ml", ""),
                         spread.get("samples", 1)])
    if not rows:
        return None
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    writer.writerows(rows)
    atomic_write_bytes(folder / VOLUMES_TABLE, text.getvalue().encode())
    return folder / VOLUMES_TABLE
