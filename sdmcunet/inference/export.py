"""The one writer of predictions: class probabilities in the network's geometry, mapped back to the
original slice, written as a label map (and, on request, probabilities, an uncertainty map and an
overlay). `sdmc_predict` and the folds' validations (a training's and the mask autoencoder's) use it.
"""

from pathlib import Path

import numpy as np

from sdmcunet.imageio import ImageGeometry, write_label_map, write_rgb_png
from sdmcunet.imageio.probabilities import save_probabilities
from sdmcunet.inference.overlays import lesion_overlay
from sdmcunet.preprocessing.geometry import Geometry, channels_to_original, probabilities_to_original


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
