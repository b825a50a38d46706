"""TEKNOFEST overlays: how the organisers draw them, and how a label map is read back.

An overlay is the organisers' grey PNG with every lesion painted as a semi-transparent red
blend (alpha about 0.5 to 0.75) and a one-pixel outline, on the lesion's inner boundary, in
the class colour (green hemorrhage, blue ischemia). Outline pixels are either the pure class
colour or a 50/50 blend of it with red. Measured on the four real samples in
`tests/data/teknofest2021` (docs/design.md §2).
"""

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from sdmcunet.labels import CLASS_COLOURS, HEMORRHAGIC, ISCHEMIC, OVERLAY_FILL_COLOUR

# A painted pixel differs from the PNG by at least alpha * 127 in one channel (about 60 for
# the lightest fill seen); 16 leaves room for re-encoded exports without catching noise.
PAINT_TOLERANCE = 16
# Outline pixels have one of G/B far above the other; the red fill keeps G == B.
OUTLINE_MARGIN = 60
# A component is "mixed" when the minority outline colour holds at least this share.
MIXED_OUTLINE_SHARE = 0.2
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (a one-pixel, 8-connected outline)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def draw_overlay(
    grey: np.ndarray, label_map: np.ndarray, fill_alpha: float = 0.6, blended_outline_share: float = 0.5,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Render an RGBA overlay of `label_map` on the uint8 image `grey` as the organisers do.

    `blended_outline_share` of the outline pixels (chosen with `rng`) are drawn as the 50/50
    red/class-colour blend seen in the real exports, the rest in the pure class colour.
    """
    if grey.shape != label_map.shape:
        raise ValueError(f"image {grey.shape} and label map {label_map.shape} differ in shape")
    rng = rng or np.random.default_rng(0)
    rgb = np.repeat(grey.astype(np.float64)[..., None], 3, axis=-1)
    lesion = label_map > 0
    rgb[lesion] = (1 - fill_alpha) * rgb[lesion] + fill_alpha * np.asarray(OVERLAY_FILL_COLOUR, np.float64)
    for label, colour in CLASS_COLOURS.items():
        outline = inner_boundary(label_map == label)
        blended = outline & (rng.random(outline.shape) < blended_outline_share)
        rgb[outline] = colour
        rgb[blended] = 0.5 * np.asarray(OVERLAY_FILL_COLOUR) + 0.5 * np.asarray(colour)
    rgba = np.empty(grey.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = np.floor(rgb + 0.5).clip(0, 255).astype(np.uint8)
    rgba[..., 3] = 255
    return rgba


@dataclass
class OverlayReading:
    """A label map read from an overlay and what had to be decided along the way."""

    label_map: np.ndarray
    n_lesions: int = 0
    # one sentence per lesion whose class could not be read from its outline colour
    ambiguities: list[str] = field(default_factory=list)


def _rgb(image: np.ndarray) -> np.ndarray:
    """Any grey/RGB/RGBA array as int32 RGB (so that differences cannot wrap around)."""
    if image.ndim == 2:
        return np.repeat(image.astype(np.int32)[..., None], 3, axis=-1)
    return image[..., :3].astype(np.int32)


def label_map_from_overlay(png: np.ndarray, overlay: np.ndarray, fallback_class: int) -> OverlayReading:
    """Derive the label map from an organisers' overlay and the PNG it was painted on.

    Each connected painted region takes the class of its outline colour; a region whose
    outline shows both colours is split by the nearest outline pixel, and one whose outline
    shows neither takes `fallback_class` (the class of the folder it came from).
    """
    png_rgb, overlay_rgb = _rgb(png), _rgb(overlay)
    if png_rgb.shape != overlay_rgb.shape:
        raise ValueError(f"overlay is {overlay_rgb.shape[:2]} but the PNG is {png_rgb.shape[:2]}")
    painted = np.abs(overlay_rgb - png_rgb).max(axis=-1) > PAINT_TOLERANCE
    green_minus_blue = overlay_rgb[..., 1] - overlay_rgb[..., 2]
    outline_class = np.zeros(painted.shape, dtype=np.uint8)
    outline_class[painted & (green_minus_blue > OUTLINE_MARGIN)] = HEMORRHAGIC
    outline_class[painted & (green_minus_blue < -OUTLINE_MARGIN)] = ISCHEMIC

    components, n_components = ndimage.label(painted, structure=_EIGHT_CONNECTED)
    reading = OverlayReading(np.zeros(painted.shape, dtype=np.uint8), n_lesions=n_components)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        region = components[box] == index
        region_outline = np.where(region, outline_class[box], 0)
        reading.label_map[box][region] = _classify_region(region, region_outline, fallback_class, reading, box)
    return reading


def _classify_region(region, region_outline, fallback_class, reading, box) -> np.ndarray | int:
    n_ischemic = int(np.count_nonzero(region_outline == ISCHEMIC))
    n_hemorrhagic = int(np.count_nonzero(region_outline == HEMORRHAGIC))
    n_outline = n_ischemic + n_hemorrhagic
    if n_outline == 0:
        reading.ambiguities.append(
            f"lesion at rows {box[0].start}-{box[0].stop - 1}, columns {box[1].start}-{box[1].stop - 1} "
            f"has no class-coloured outline; the folder's class {fallback_class} was used"
        )
        return fallback_class
    if min(n_ischemic, n_hemorrhagic) < MIXED_OUTLINE_SHARE * n_outline:
        return ISCHEMIC if n_ischemic > n_hemorrhagic else HEMORRHAGIC
    # Two touching lesions of different kinds: each pixel takes its nearest outline's class.
    _, (rows, columns) = ndimage.distance_transform_edt(region_outline == 0, return_indices=True)
    return region_outline[rows, columns][region]
