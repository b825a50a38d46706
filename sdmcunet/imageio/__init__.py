"""Reading CT slices (DICOM, PNG, NIfTI) and writing images and label maps.

Readers come in two forms: `read_*_with_geometry` returns where the pixels lie (`ImageGeometry`),
which a label map written for the image must copy; `read_slice`, `read_label_slice` and
`read_nifti` return the (row, column) spacing alone, for callers that need no more.
"""

from pathlib import Path

import numpy as np

from sdmcunet.imageio.dicom import DICOM_SUFFIXES, DicomSlice, read_dicom_slice
from sdmcunet.imageio.geometry import DEFAULT_GEOMETRY, ImageGeometry, spacing_of
from sdmcunet.imageio.simpleitk_io import (
    is_nifti, read_nifti, read_nifti_with_geometry, read_png, write_image, write_label_map, write_rgb_png,
)
from sdmcunet.utils.errors import SDMCError

__all__ = [
    "DicomSlice", "read_dicom_slice", "read_png", "read_nifti", "read_nifti_with_geometry", "write_image",
    "write_label_map", "write_rgb_png", "grey_channel", "read_slice", "read_slice_with_geometry",
    "read_label_slice", "read_label_slice_with_geometry", "ImageGeometry", "DEFAULT_GEOMETRY", "DICOM_SUFFIXES",
]


def grey_channel(png: np.ndarray) -> np.ndarray:
    """The grey values of a PNG read by `read_png`: itself if grey, channel 0 if RGB(A).

    Channel 0 is what the published SDMC-Seg code feeds the model; the organisers' PNGs are
    grey stored as RGBA with R = G = B (and `read_png` gives grey+alpha PNGs so: alpha is
    transparency, not intensity).
    """
    return png if png.ndim == 2 else png[..., 0]


def read_slice_with_geometry(path: str | Path) -> tuple[np.ndarray, ImageGeometry | None]:
    """Any supported slice file as a 2D array and where its pixels lie, if the file says.

    DICOM gives Hounsfield units and its pixel spacing, PNG its grey values and no geometry,
    NIfTI its stored values and its full geometry.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES) or path.suffix == "":
        dicom = read_dicom_slice(path)
        return dicom.hounsfield, None if dicom.spacing is None else ImageGeometry.from_spacing(dicom.spacing)
    if name.endswith(".png"):
        return grey_channel(read_png(path)), None
    if is_nifti(name):
        return read_nifti_with_geometry(path)
    raise SDMCError(f"{path}: unsupported file type (expected {', '.join(DICOM_SUFFIXES)}, .png, .nii or .nii.gz)")


def read_slice(path: str | Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """`read_slice_with_geometry` with the (row, column) spacing alone."""
    values, geometry = read_slice_with_geometry(path)
    return values, spacing_of(geometry)


def read_label_slice_with_geometry(path: str | Path) -> tuple[np.ndarray, ImageGeometry | None]:
    """A label-map file as a 2D array and where its pixels lie, if the file says.

    Unlike an image, a label map must be a grey PNG: the first channel of a colour picture (a mask
    painted in class colours) would silently be taken for its labels.
    """
    path = Path(path)
    if not path.name.lower().endswith(".png"):
        return read_slice_with_geometry(path)
    png = read_png(path)
    if png.ndim == 3:
        raise SDMCError(f"{path}: a label map must be a grey PNG (one value per pixel), this one has "
                        f"{png.shape[2]} channels")
    return png, None


def read_label_slice(path: str | Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """`read_label_slice_with_geometry` with the (row, column) spacing alone."""
    values, geometry = read_label_slice_with_geometry(path)
    return values, spacing_of(geometry)
