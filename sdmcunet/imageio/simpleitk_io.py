"""PNG and NIfTI reading and writing through SimpleITK, in numpy (row, column) order.

Arrays are (rows, columns) or (rows, columns, components); spacing is (row, column) in mm,
the reverse of SimpleITK's (x, y). NIfTI files are read and written with their full geometry
(`ImageGeometry`: spacing, origin, direction); PNG stores none. Every write is atomic.
"""

import errno
import gzip
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdmcunet.imageio.geometry import ImageGeometry, as_geometry
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_output

if TYPE_CHECKING:  # imported on first use (see _simpleitk)
    import SimpleITK

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Single-file volume formats and the ITK reader of each (NIfTI's also read 2D slices).
VOLUME_READERS = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".nrrd": "NrrdImageIO", ".mha": "MetaImageIO"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY_ALPHA = 4  # the PNG colour type of grey + alpha, which SimpleITK cannot read
# Where the NIfTI-1 and NIfTI-2 headers (told apart by their size) keep the voxels' data type and offset.
_NIFTI_HEADERS = {348: {"datatype": (70, "h"), "vox_offset": (108, "f")},
                  540: {"datatype": (12, "h"), "vox_offset": (168, "q")}}
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIFTI_TYPE_FLOAT32, NIFTI_TYPE_FLOAT64


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_volume_file(path: str | Path) -> bool:
    """NIfTI, NRRD or MetaImage (.mha): files that may hold a 3D volume."""
    return str(path).lower().endswith(tuple(VOLUME_READERS))


def read_png(path: str | Path) -> np.ndarray:
    """A PNG as stored: grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4), uint8 or uint16.

    A grey+alpha PNG comes as RGBA with its grey in R, G and B: the layout of the organisers' grey
    PNGs, which every reader of pictures already knows.
    """
    header = _png_bit_depth_and_colour_type(Path(path))
    if header is not None and header[1] == PNG_GREY_ALPHA:
        return _read_grey_alpha_png(Path(path), header[0])
    return _simpleitk().GetArrayFromImage(_read(path, "PNGImageIO"))


def _png_bit_depth_and_colour_type(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's header chunk; None when the file does not begin like a PNG."""
    try:
        with open(path, "rb") as stream:
            start = stream.read(26)  # signature, IHDR length and type, width, height, bit depth, colour type
    except OSError:
        return None
    if len(start) < 26 or not start.startswith(PNG_SIGNATURE) or start[12:16] != b"IHDR":
        return None
    return start[24], start[25]


def _read_grey_alpha_png(path: Path, bit_depth: int) -> np.ndarray:
    """An 8-bit grey+alpha PNG as RGBA uint8, through Pillow: ITK has no pixel type for it.

    Pillow reads 16-bit grey+alpha through 8 bits, which would silently drop the low byte, so
    those are refused.
    """
    from PIL import Image

    if bit_depth != 8:
        raise SDMCError(f"{path}: a {bit_depth}-bit grey+alpha PNG cannot be read; save it as a grey PNG "
                        f"(without the alpha channel)")
    try:
        with Image.open(path) as image:
            grey, alpha = np.moveaxis(np.asarray(image), -1, 0)
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as error:
        raise SDMCError(f"{path}: cannot be read as PNG ({error})") from None
    return np.stack([grey, grey, grey, alpha], axis=-1)


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float]]:
    """A 2D NIfTI image (or a 3D one with a single slice) and its (row, column) spacing."""
    array, geometry = read_nifti_with_geometry(path)
    return array, geometry.spacing


def read_nifti_with_geometry(path: str | Path) -> tuple[np.ndarray, ImageGeometry]:
    """A 2D NIfTI image (or a 3D one with a single slice) and its full geometry."""
    array, geometry = _read_nifti(Path(path))
    if array.ndim == 3 and array.shape[0] == 1:  # nnU-Net writes 2D cases as one-slice volumes
        array = array[0]
    if array.ndim != 2:
        raise SDMCError(f"{path}: expected a 2D image, found shape {array.shape}")
    return array, geometry


def image_slices(path: str | Path) -> int:
    """How many slices a NIfTI, NRRD or MetaImage file holds (1 for a 2D image), from its header alone."""
    path = Path(path)
    reader = _simpleitk().ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise SDMCError(f"{path}: cannot be read as an image ({reason})") from None
    size = reader.GetSize()
    return size[2] if len(size) > 2 else 1


def read_volume_with_geometry(path: str | Path) -> tuple[np.ndarray, ImageGeometry]:
    """A NIfTI, NRRD or MetaImage file as (slices, rows, columns) and its full geometry: a 3D volume, or a
    2D image as one slice. 4D images and images of vectors are refused."""
    path = Path(path)
    if is_nifti(path):
        array, geometry = _read_nifti(path)
    else:
        image = _read(path, next(reader for suffix, reader in VOLUME_READERS.items()
                                 if path.name.lower().endswith(suffix)))
        array, geometry = _simpleitk().GetArrayFromImage(image), _geometry(image, path)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise SDMCError(f"{path}: holds NaN or infinite values")
    if array.ndim not in (2, 3) or len(geometry.itk_spacing) != array.ndim:
        raise SDMCError(f"{path}: an image of shape {array.shape} with {len(geometry.itk_spacing)}D geometry (values of "
                        f"several components per voxel); sdmc_predict reads images of one value per voxel")
    return (array[None] if array.ndim == 2 else array), geometry


def _read_nifti(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    twin = path.with_name(path.name[:-3]) if path.name.lower().endswith(".gz") else None
    if twin is not None and twin.is_file():  # ITK's reader opens x.nii when asked for x.nii.gz
        raise SDMCError(f"{path}: {twin.name} lies beside it and would be read instead; remove one of the two")
    image = _read(path, "NiftiImageIO")
    geometry = _geometry(image, path)
    array = _simpleitk().GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and _stores_non_finite_values(path, array.size):
        raise SDMCError(f"{path}: holds NaN or infinite values")
    return array, geometry


def _geometry(image: "SimpleITK.Image", path: Path) -> ImageGeometry:
    if image.GetDimension() not in (2, 3):
        raise SDMCError(f"{path}: a {image.GetDimension()}D image of size {image.GetSize()}; sdmc_predict reads 2D "
                        f"slices and 3D volumes (split the other axes into files of their own)")
    return ImageGeometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def _stores_non_finite_values(path: Path, n_values: int) -> bool:
    """Whether a float NIfTI file stores NaN or infinite voxels.

    ITK's NIfTI reader silently replaces them with 0, which would hide a corrupt image, so the
    stored voxels are read here, where the header says they are.
    """
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"  # by content, as ITK does, not by name
    try:
        with (gzip.open if gzipped else open)(path, "rb") as stream:
            layout = _float_voxel_layout(stream.read(max(_NIFTI_HEADERS)))
            if layout is None:
                return False
            dtype, offset = layout
            stream.seek(offset)
            voxels = np.frombuffer(stream.read(n_values * dtype.itemsize), dtype=dtype)
    except (OSError, EOFError, ValueError, OverflowError, zlib.error, struct.error) as error:
        raise SDMCError(f"{path}: cannot be read as Nifti ({error})") from None
    return not np.isfinite(voxels).all()


def _float_voxel_layout(header: bytes) -> tuple[np.dtype, int] | None:
    """The dtype and file offset of the voxels a NIfTI header describes; None unless they are floats."""
    for byte_order in "<>":
        fields = _NIFTI_HEADERS.get(struct.unpack_from(f"{byte_order}i", header)[0])
        if fields is not None:
            datatype, vox_offset = (struct.unpack_from(byte_order + code, header, offset)[0]
                                    for offset, code in fields.values())
            if datatype not in _NIFTI_FLOAT_TYPES:
                return None
            return np.dtype(byte_order + _NIFTI_FLOAT_TYPES[datatype]), int(vox_offset)
    return None


def _simpleitk():
    """SimpleITK, imported on first use: training and inference on arrays read no image files (a GPU machine
    can run them without SimpleITK installed)."""
    import SimpleITK

    return SimpleITK


def _read(path: str | Path, image_io: str) -> "SimpleITK.Image":
    """The image in `path` (a SimpleITK image) read with `image_io`; an error naming the file if it cannot be."""
    sitk = _simpleitk()
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
    return image


def write_image(array: np.ndarray, path: str | Path,
                geometry: ImageGeometry | tuple[float, float] = (1.0, 1.0)) -> None:
    """Write a 2D array as NIfTI or PNG (chosen by the suffix), or a (slices, rows, columns) array with
    a 3D geometry as a NIfTI volume, atomically.

    `geometry` is the reference image's (a spacing alone means origin 0 and the identity direction).
    NIfTI keeps the dtype and the full geometry, a one-slice volume's included; PNG holds only
    uint8/uint16 and the spacing.
    """
    sitk = _simpleitk()
    path, geometry = Path(path), as_geometry(geometry)
    if path.suffix.lower() == ".png":
        if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"PNG holds a 2D uint8 or uint16 array, not {array.ndim}D {array.dtype} ({path})")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(geometry.itk_spacing[:2])
    else:
        if array.ndim == 2 and geometry.is_volume:  # a one-slice volume (nnU-Net's 2D cases) stays one
            array = array[None]
        if array.ndim != len(geometry.itk_spacing):
            raise ValueError(f"a {array.ndim}D array cannot be written with a {len(geometry.itk_spacing)}D "
                             f"geometry ({path})")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(geometry.itk_spacing)
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)
        _check_complete(temporary, array)


def write_label_map(label_map: np.ndarray, path: str | Path,
                    geometry: ImageGeometry | tuple[float, float] = (1.0, 1.0)) -> None:
    """Write a label map (values 0..255) as uint8 PNG or NIfTI, with its image's geometry (see `write_image`)."""
    if label_map.size and (label_map.min() < 0 or label_map.max() > 255):
        raise ValueError(f"label values must lie in 0..255 to be written to {path}")
    write_image(label_map.astype(np.uint8, copy=False), path, geometry)


def write_rgb_png(picture: np.ndarray, path: str | Path) -> None:
    """Write an (H, W, 3) uint8 picture as an RGB PNG, atomically."""
    if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 picture for {path}, got {picture.shape} {picture.dtype}")
    sitk = _simpleitk()
    with atomic_output(path) as temporary:
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(picture), isVector=True), str(temporary))
        _check_complete(temporary, picture)


def _check_complete(path: Path, array: np.ndarray) -> None:
    """SimpleITK does not report every failed write: a full disk can leave a PNG or a NIfTI file
    truncated without an error, and a truncated NIfTI file even reads back, with zeros for the
    missing voxels. So each file is checked before it replaces its target."""
    name = path.name.lower()
    try:
        if name.endswith(".gz"):  # the gzip trailer holds the length and CRC of the whole content
            with gzip.open(path) as stream:
                while stream.read(1 << 20):
                    pass
        elif name.endswith(".png"):  # libpng refuses a truncated PNG
            _simpleitk().ReadImage(str(path))
        # an uncompressed NIfTI file is (at least) the 348-byte header followed by the voxels
        complete = not name.endswith(".nii") or path.stat().st_size >= 348 + array.nbytes
    except (OSError, EOFError, zlib.error, RuntimeError):
        complete = False
    if not complete:
        raise OSError(errno.EIO, "the file is incomplete although SimpleITK reported no error")
