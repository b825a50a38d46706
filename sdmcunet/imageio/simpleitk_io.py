"""PNG and NIfTI reading and writing through SimpleITK, in numpy (row, column) order.

Arrays are (rows, columns) or (rows, columns, components); spacing is (row, column) in mm,
the reverse of SimpleITK's (x, y). Every write is atomic.
"""

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_png(path: str | Path) -> np.ndarray:
    """A PNG as stored: grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4), uint8 or uint16."""
    array, _ = _read(path, "PNGImageIO")
    return array


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float]]:
    """A 2D NIfTI image (or a 3D one with a single slice) and its (row, column) spacing."""
    array, spacing = _read(path, "NiftiImageIO")
    if array.ndim == 3 and array.shape[0] == 1:  # nnU-Net writes 2D cases as one-slice volumes
        array, spacing = array[0], spacing[1:]
    if array.ndim != 2:
        raise SDMCError(f"{path}: expected a 2D image, found shape {array.shape}")
    return array, spacing


def _read(path: str | Path, image_io: str) -> tuple[np.ndarray, tuple[float, ...]]:
    path = Path(path)
    if not path.is_file():
        raise SDMCError(f"{path}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetImageIO(image_io)
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise SDMCError(f"{path}: cannot be read as {image_io.removesuffix('ImageIO')} ({reason})") from None
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def write_image(array: np.ndarray, path: str | Path, spacing: tuple[float, float] = (1.0, 1.0)) -> None:
    """Write a 2D array as NIfTI or PNG (chosen by the suffix), atomically.

    PNG holds only uint8/uint16 and no spacing; NIfTI keeps the dtype and the spacing.
    """
    path = Path(path)
    if array.ndim != 2:
        raise ValueError(f"expected a 2D array for {path}, got shape {array.shape}")
    if path.suffix.lower() == ".png" and array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG holds uint8 or uint16, not {array.dtype} ({path})")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    with atomic_path(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)


def write_label_map(label_map: np.ndarray, path: str | Path, spacing: tuple[float, float] = (1.0, 1.0)) -> None:
    """Write a label map (values 0..255) as uint8 PNG or NIfTI."""
    if label_map.size and (label_map.min() < 0 or label_map.max() > 255):
        raise ValueError(f"label values must lie in 0..255 to be written to {path}")
    write_image(label_map.astype(np.uint8, copy=False), path, spacing)


def write_rgb_png(picture: np.ndarray, path: str | Path) -> None:
    """Write an (H, W, 3) uint8 picture as an RGB PNG, atomically."""
    if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 picture for {path}, got {picture.shape} {picture.dtype}")
    with atomic_path(path) as temporary:
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(picture), isVector=True), str(temporary))
