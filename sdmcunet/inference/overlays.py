"""Pictures of a slice: the CT in grey with the lesions coloured as in the published figures."""

import numpy as np
from scipy import ndimage

from sdmcunet.labels import MASK_IMAGE_COLOURS, NON_STROKE

BRAIN_WINDOW_HU = (0.0, 80.0)  # the usual brain window: grey and white matter, blood and infarcts visible
FILL_OPACITY = 0.45


def display_image(channel: np.ndarray, is_hounsfield: bool) -> np.ndarray:
    """A raw channel as uint8 grey: Hounsfield units in the brain window, anything else min-max."""
    low, high = BRAIN_WINDOW_HU if is_hounsfield else (float(channel.min()), float(channel.max()))
    scaled = (np.clip(channel, low, high) - low) / max(high - low, 1e-8)
    return np.round(scaled * 255).astype(np.uint8)


def lesion_overlay(grey: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: each lesion class a semi-transparent fill with a solid one-pixel outline."""
    if grey.shape != label_map.shape:
        raise ValueError(f"image shape {grey.shape} differs from label map shape {label_map.shape}")
    picture = np.repeat(grey[..., None].astype(np.float32), 3, axis=2)
    for label, colour in MASK_IMAGE_COLOURS.items():
        if label == NON_STROKE:
            continue
        lesion = label_map == label
        outline = lesion & ~ndimage.binary_erosion(lesion)
        picture[lesion] = (1 - FILL_OPACITY) * picture[lesion] + FILL_OPACITY * np.asarray(colour, np.float32)
        picture[outline] = colour
    return np.round(picture).astype(np.uint8)


def mask_picture(label_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the label map as SDMC-Seg's mask colour image (every class its colour)."""
    palette = np.zeros((max(MASK_IMAGE_COLOURS) + 1, 3), dtype=np.uint8)
    for label, colour in MASK_IMAGE_COLOURS.items():
        palette[label] = colour
    return palette[label_map]
