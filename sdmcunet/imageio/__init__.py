"""Reading CT slices (DICOM, PNG, NIfTI) and writing images and label maps."""

from pathlib import Path

import numpy as np

from sdmcunet.imageio.dicom import DicomSlice, read_dicom_slice
from sdmcunet.imageio.simpleitk_io import is_nifti, read_nifti, read_png, write_image, write_label_map, write_rgb_png
from sdmcunet.utils.errors import SDMCError

__all__ = [
    "DicomSlice", "read_dicom_slice", "read_png", "read_nifti", "write_image", "write_label_map",
    "write_rgb_png", "grey_channel", "read_slice", "read_label_slice",
]


def grey_channel(png: np.ndarray) -> np.ndarray:
    """The grey values of a PNG read by `read_png`: itself if grey, channel 0 if RGB(A).

    Channel 0 is what the published SDMC-Seg code feeds the model; the organisers' PNGs are
    grey stored as RGBA with R = G = B.
    """
    return png if png.ndim == 2 else png[..., 0]


def read_slice(path: str | Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Any supported slice file as a 2D array and its (row, column) spacing if known.

    DICOM gives Hounsfield units, PNG its grey values, NIfTI its stored values.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".dcm") or path.suffix == "":
        dicom = read_dicom_slice(path)
        return dicom.hounsfield, dicom.spacing
    if name.endswith(".png"):
        return grey_channel(read_png(path)), None
    if is_nifti(name):
        return read_nifti(path)
    raise SDMCError(f"{path}: unsupported file type (expected .dcm, .png, .nii or .nii.gz)")


def read_label_slice(path: str | Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A label-map file as a 2D array and its (row, column) spacing if known.

    Unlike an image, a label map must be a grey PNG: the first channel of a colour picture (a mask
    painted in class colours) would silently be taken for its labels.
    """
    path = Path(path)
    if not path.name.lower().endswith(".png"):
        return read_slice(path)
    png = read_png(path)
    if png.ndim == 3:
        raise SDMCError(f"{path}: a label map must be a grey PNG (one value per pixel), this one has "
                        f"{png.shape[2]} channels")
    return png, None
