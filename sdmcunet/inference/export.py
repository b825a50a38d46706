"""The one writer of predictions: class probabilities in the network's geometry, mapped back to the
original slice, written as a label map (and, on request, probabilities, an uncertainty map and an
overlay). `sdmc_predict` and the folds' validations (a training's and the mask autoencoder's) use it.
A volume's slices are mapped back one by one and written as one 3D label map, with its lesion
volumes and, for a DICOM series, a DICOM SEG.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdmcunet.imageio import ImageGeometry, write_label_map, write_rgb_png
from sdmcunet.imageio.probabilities import save_probabilities
from sdmcunet.inference.dicom_seg import write_dicom_seg
from sdmcunet.inference.lesion_volumes import volume_report
from sdmcunet.inference.overlays import lesion_overlay
from sdmcunet.preprocessing.geometry import Geometry, channels_to_original, probabilities_to_original
from sdmcunet.utils.files import atomic_write_json


def export_prediction(probabilities: np.ndarray, network_geometry: Geometry, label_path: Path,
                      image_geometry: ImageGeometry, probabilities_path: Path | None = None,
                      uncertainty: np.ndarray | None = None, overlay_path: Path | None = None,
                      display: np.ndarray | None = None) -> np.ndarray:
    """Write the label map of (classes, H, W) network-geometry `probabilities` at `label_path`, lying where
    `image_geometry` says, and the original-geometry probabilities (with `uncertainty`, (H, W) in the
    network's geometry) and an overlay of the label map on `display` where their paths are given.

    The label map is written last: its presence means the case is complete. Returns it.
    """
    original = probabilities_to_original(probabilities, network_geometry)
    label_map = original.argmax(0).astype(np.uint8)
    if probabilities_path is not None:
        original_uncertainty = None if uncertainty is None else channels_to_original(uncertainty[None],
                                                                                      network_geometry)[0]
        save_probabilities(probabilities_path, original, original_uncertainty)
    if overlay_path is not None:
        write_rgb_png(lesion_overlay(display, label_map), overlay_path)
    write_label_map(label_map, label_path, image_geometry)
    return label_map


@dataclass
class VolumePrediction:
    """A volume's network-geometry outputs, one row per slice."""

    probabilities: np.ndarray  # (slices, classes, rows, columns)
    uncertainty: np.ndarray | None  # (slices, rows, columns)
    draws: np.ndarray | None  # (draws, slices, classes, rows, columns)
    geometries: list[Geometry]  # per slice, original -> network
    image_geometry: ImageGeometry  # the volume's
    display: np.ndarray | None  # (slices, H, W) uint8, for the overlay


@dataclass
class VolumeOutputs:
    case: str
    label_path: Path
    probabilities_path: Path | None
    overlay_path: Path | None
    volumes_path: Path
    seg_path: Path | None  # a DICOM SEG, for a DICOM series


def export_volume_prediction(prediction: VolumePrediction, outputs: VolumeOutputs, labels: dict[str, int],
                             algorithm: str, series_files: tuple[Path, ...] = ()) -> np.ndarray:
    """Write a volume's 3D label map and what goes with it (see `VolumeOutputs`); the label map last, so
    that its presence means the case is complete. Returns it."""
    original = _to_original(prediction.probabilities, prediction.geometries)  # (slices, classes, H, W)
    label_volume = original.argmax(1).astype(np.uint8)
    if outputs.probabilities_path is not None:
        uncertainty = None if prediction.uncertainty is None else np.stack([
            channels_to_original(row[None], geometry)[0]
            for row, geometry in zip(prediction.uncertainty, prediction.geometries)])
        save_probabilities(outputs.probabilities_path, original.transpose(1, 0, 2, 3), uncertainty)
    if outputs.overlay_path is not None:
        write_rgb_png(_mosaic([lesion_overlay(grey, labels_of_slice)
                               for grey, labels_of_slice in zip(prediction.display, label_volume)]),
                      outputs.overlay_path)
    draw_label_volumes = None if prediction.draws is None else [
        _to_original(draw, prediction.geometries).argmax(1).astype(np.uint8) for draw in prediction.draws]
    atomic_write_json(outputs.volumes_path, volume_report(outputs.case, label_volume, prediction.image_geometry,
                                                          labels, draw_label_volumes))
    if outputs.seg_path is not None:
        write_dicom_seg(label_volume, series_files, labels, algorithm, outputs.seg_path)
    write_label_map(label_volume, outputs.label_path, prediction.image_geometry)
    return label_volume


def _to_original(probabilities: np.ndarray, geometries: list[Geometry]) -> np.ndarray:
    """(slices, classes, rows, columns) network-geometry probabilities -> (slices, classes, H, W)."""
    return np.stack([probabilities_to_original(row, geometry) for row, geometry in zip(probabilities, geometries)])


def _mosaic(pictures: list[np.ndarray]) -> np.ndarray:
    """(H, W, 3) pictures of a volume's slices tiled in reading order, as square as they go."""
    columns = math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / columns)
    height, width = pictures[0].shape[:2]
    mosaic = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for index, picture in enumerate(pictures):
        row, column = divmod(index, columns)
        mosaic[row * height:(row + 1) * height, column * width:(column + 1) * width] = picture
    return mosaic
