"""Between the original image and the network's input, both ways.

Forward: crop to the head (the largest bright connected region, so the CT table is left
out), pad to the network input's aspect ratio (a square for a square input: the slice's own
aspect ratio is kept), resize to the plan's image size (rows, columns). Backward:
the exact inverse, for probabilities (interpolated) or label maps (per-class interpolation and
argmax, so classes never mix into values that are not labels).
"""

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

HEAD_MARGIN = 4  # pixels kept around the head
AIR_HU = -500.0


@dataclass
class Geometry:
    original_shape: tuple[int, int]
    crop_box: tuple[int, int, int, int]  # row start, row stop, column start, column stop
    padding: tuple[int, int, int, int]  # top, bottom, left, right: the crop padded to the network's aspect ratio
    network_shape: tuple[int, int]

    def to_json(self) -> dict:
        return {key: list(value) for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, content: dict) -> "Geometry":
        return cls(**{key: tuple(value) for key, value in content.items()})


def head_box(channel: np.ndarray, is_hounsfield: bool) -> tuple[int, int, int, int]:
    """Bounding box of the head in one raw channel (the whole image when nothing stands out)."""
    threshold = AIR_HU if is_hounsfield else channel.min() + 0.05 * (channel.max() - channel.min())
    bright = channel > threshold
    components, count = ndimage.label(bright)
    if count == 0:
        return 0, channel.shape[0], 0, channel.shape[1]
    sizes = ndimage.sum_labels(bright, components, index=np.arange(1, count + 1))
    rows, columns = ndimage.find_objects(components)[int(np.argmax(sizes))]
    return (max(rows.start - HEAD_MARGIN, 0), min(rows.stop + HEAD_MARGIN, channel.shape[0]),
            max(columns.start - HEAD_MARGIN, 0), min(columns.stop + HEAD_MARGIN, channel.shape[1]))


def plan_geometry(original_shape: tuple[int, int], crop_box: tuple[int, int, int, int],
                  size: tuple[int, int]) -> Geometry:
    """The crop padded (centred) to the aspect ratio of the network's `size` (rows, columns), so that resizing
    keeps the slice's own aspect ratio: a square for a square size."""
    height, width = crop_box[1] - crop_box[0], crop_box[3] - crop_box[2]
    rows, columns = size
    padded_height = max(height, math.ceil(width * rows / columns))
    padded_width = max(width, math.ceil(height * columns / rows))
    top, left = (padded_height - height) // 2, (padded_width - width) // 2
    return Geometry(tuple(original_shape), tuple(crop_box),
                    (top, padded_height - height - top, left, padded_width - width - left), (rows, columns))


def image_to_network(image: np.ndarray, geometry: Geometry, interpolation: str) -> np.ndarray:
    """(C, H, W) in the original geometry -> (C, rows, columns) of the network, float32; padding is 0."""
    cropped = _crop_and_pad(image, geometry)
    return _resize(torch.from_numpy(cropped), geometry.network_shape, interpolation).numpy()


def label_to_network(label_map: np.ndarray, geometry: Geometry, num_classes: int) -> np.ndarray:
    cropped = _crop_and_pad(label_map[None], geometry)[0]
    return resize_label_map(cropped, geometry.network_shape, num_classes)


def channels_to_original(channels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(K, rows, columns) maps of the network -> (K, H, W), bilinear; 0 outside the crop."""
    padded = _resize(torch.from_numpy(channels.astype(np.float32)), _padded_shape(geometry), "bilinear").numpy()
    output = np.zeros((channels.shape[0], *geometry.original_shape), dtype=np.float32)
    r0, r1, c0, c1 = geometry.crop_box
    top, bottom, left, right = geometry.padding
    output[:, r0:r1, c0:c1] = padded[:, top:padded.shape[1] - bottom, left:padded.shape[2] - right]
    return output


def probabilities_to_original(probabilities: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(K, rows, columns) class probabilities -> (K, H, W); outside the crop, background is certain."""
    output = channels_to_original(probabilities, geometry)
    r0, r1, c0, c1 = geometry.crop_box
    outside = np.ones(geometry.original_shape, dtype=bool)
    outside[r0:r1, c0:c1] = False
    output[0][outside] = 1.0
    return output


def label_map_to_original(label_map: np.ndarray, geometry: Geometry, num_classes: int) -> np.ndarray:
    one_hot = np.eye(num_classes, dtype=np.float32)[label_map].transpose(2, 0, 1)
    return probabilities_to_original(one_hot, geometry).argmax(0).astype(np.uint8)


def resize_label_map(label_map: np.ndarray, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    one_hot = torch.from_numpy(np.eye(num_classes, dtype=np.float32)[label_map].transpose(2, 0, 1))
    return _resize(one_hot, shape, "bilinear").argmax(0).numpy().astype(np.uint8)


def _padded_shape(geometry: Geometry) -> tuple[int, int]:
    r0, r1, c0, c1 = geometry.crop_box
    top, bottom, left, right = geometry.padding
    return r1 - r0 + top + bottom, c1 - c0 + left + right


def _crop_and_pad(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    r0, r1, c0, c1 = geometry.crop_box
    top, bottom, left, right = geometry.padding
    return np.pad(array[:, r0:r1, c0:c1], ((0, 0), (top, bottom), (left, right)))


def _resize(batch: torch.Tensor, shape: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(batch.shape[-2:]) == tuple(shape):
        return batch.float()
    # antialias low-passes when shrinking (no aliasing of thin lesions); when enlarging it changes
    # nothing but the time (a third more, on every predicted slice)
    shrinking = shape[0] < batch.shape[-2] or shape[1] < batch.shape[-1]
    return F.interpolate(batch[None].float(), size=tuple(shape), mode=mode, align_corners=False,
                         antialias=shrinking)[0]
