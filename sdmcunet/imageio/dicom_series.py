"""DICOM series: files recognised by content, grouped by SeriesInstanceUID and checked as volumes.

A hospital exports a CT series as a folder of DICOM files, often without an extension (named by
UID or `IM0001`), so a file is DICOM when it says so (the `DICM` preamble), whatever its name.
The slices of a series are ordered by their position along the slice normal. A series is a
volume only when its slices are one regular grid: one size, one orientation, a position on every
slice, no two at one position, even spacing (no slice missing). Anything else is described in
words (`SeriesCheck.not_a_volume`), so that the caller can predict its slices one by one instead
of writing a volume whose slices would lie in the wrong places.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdmcunet.imageio.dicom import DICOM_SUFFIXES, read_dataset
from sdmcunet.imageio.geometry import ImageGeometry
from sdmcunet.utils.errors import SDMCError

PREAMBLE_BYTES = 128  # then the four bytes "DICM" (DICOM part 10 files)
ORIENTATION_TOLERANCE = 1e-4  # direction cosines of one series agree to this
SPACING_TOLERANCE = 0.01  # relative: gaps within 1% of the median gap are even
SAME_POSITION_MM = 1e-3


def is_dicom_file(path: Path) -> bool:
    """Whether `path` is a DICOM part 10 file (by its preamble), or is named as one."""
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as stream:
            start = stream.read(PREAMBLE_BYTES + 4)
    except OSError:
        return False
    return start[PREAMBLE_BYTES:] == b"DICM"


@dataclass(frozen=True)
class DicomHeader:
    """What grouping and ordering need of one file, read without its pixels."""

    path: Path
    series_uid: str  # the file's own path when the header has no SeriesInstanceUID: a series of one
    modality: str | None
    shape: tuple[int, int]  # rows, columns
    pixel_spacing: tuple[float, float] | None  # (row, column) mm
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row then column direction cosines
    position: tuple[float, float, float] | None  # ImagePositionPatient of the first pixel, mm
    instance_number: int | None
    frame_of_reference_uid: str | None  # what a DICOM SEG of the series must reference


def read_dicom_header(path: Path) -> DicomHeader:
    """The header of a DICOM file; an error naming it when it cannot be read."""
    dataset = read_dataset(path, stop_before_pixels=True)
    try:
        return DicomHeader(
            path=path,
            series_uid=str(dataset.get("SeriesInstanceUID") or path),
            modality=dataset.get("Modality") or None,
            shape=(int(dataset.Rows), int(dataset.Columns)),
            pixel_spacing=_floats(dataset.get("PixelSpacing"), 2),
            orientation=_floats(dataset.get("ImageOrientationPatient"), 6),
            position=_floats(dataset.get("ImagePositionPatient"), 3),
            instance_number=int(dataset.InstanceNumber) if dataset.get("InstanceNumber") not in (None, "") else None,
            frame_of_reference_uid=str(dataset.get("FrameOfReferenceUID") or "") or None,
        )
    except (ValueError, TypeError, OverflowError) as error:
        raise SDMCError(f"{path}: a DICOM header value is unreadable ({type(error).__name__}: {error})") from None


def _floats(value, count: int) -> tuple[float, ...] | None:
    if value is None or len(value) != count:
        return None
    numbers = tuple(float(item) for item in value)
    return numbers if all(np.isfinite(numbers)) else None


def group_series(headers: list[DicomHeader]) -> dict[str, list[DicomHeader]]:
    """Headers by series, each series ordered along its slice normal (by InstanceNumber, then name,
    where positions are missing)."""
    series: dict[str, list[DicomHeader]] = {}
    for header in headers:
        series.setdefault(header.series_uid, []).append(header)
    return {uid: sorted(members, key=_order_key) for uid, members in sorted(series.items())}


def _order_key(header: DicomHeader) -> tuple:
    along_normal = (float(np.dot(_normal(header.orientation), header.position))
                    if header.position is not None and header.orientation is not None else 0.0)
    number = header.instance_number if header.instance_number is not None else 0
    return along_normal, number, header.path.name


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


@dataclass(frozen=True)
class SeriesCheck:
    """A series as a volume: its geometry, or why its slices do not make one."""

    geometry: ImageGeometry | None
    not_a_volume: str | None  # in words, for the user; None when `geometry` is set


def check_series(headers: list[DicomHeader]) -> SeriesCheck:
    """Whether the ordered slices of one series (two or more) make a regular volume (see the module's
    docstring)."""
    first = headers[0]
    if len({header.shape for header in headers}) > 1:
        shapes = sorted({f"{rows}x{columns}" for rows, columns in (header.shape for header in headers)})
        return SeriesCheck(None, f"its slices differ in size ({', '.join(shapes)})")
    lacking = [header.path.name for header in headers
               if header.position is None or header.orientation is None or header.pixel_spacing is None]
    if lacking:
        return SeriesCheck(None, f"{len(lacking)} slice(s) lack ImagePositionPatient, ImageOrientationPatient or "
                                 f"PixelSpacing (e.g. {lacking[0]}), so where they lie is unknown")
    if any(not np.allclose(header.orientation, first.orientation, atol=ORIENTATION_TOLERANCE) for header in headers):
        return SeriesCheck(None, "its slices have different orientations")
    if any(not np.allclose(header.pixel_spacing, first.pixel_spacing, rtol=SPACING_TOLERANCE) for header in headers):
        return SeriesCheck(None, "its slices have different pixel spacings")
    normal = _normal(first.orientation)
    levels = np.array([np.dot(normal, header.position) for header in headers])
    gaps = np.diff(levels)
    if (gaps < SAME_POSITION_MM).any():
        index = int(np.argmax(gaps < SAME_POSITION_MM))
        return SeriesCheck(None, f"{headers[index].path.name} and {headers[index + 1].path.name} lie at the same "
                                 f"position ({levels[index]:.2f} mm along the normal): a duplicated slice")
    step = float(gaps.min())  # the series' spacing: any larger gap is uneven spacing, or slices missing
    uneven = np.abs(gaps - step) > max(SAME_POSITION_MM, SPACING_TOLERANCE * step)
    if uneven.any():
        index = int(np.argmax(uneven))
        missing = round(gaps[index] / step) - 1
        what = (f"{missing} slice(s) missing" if missing >= 1 and abs(gaps[index] - (missing + 1) * step) <
                SPACING_TOLERANCE * step else "uneven spacing")
        return SeriesCheck(None, f"{what} between {headers[index].path.name} and {headers[index + 1].path.name} "
                                 f"(a gap of {gaps[index]:.2f} mm where the series' spacing is {step:.2f} mm)")
    row_cosines, column_cosines = first.orientation[:3], first.orientation[3:]
    direction = np.column_stack([row_cosines, column_cosines, normal])  # ITK: one column per image axis
    row_spacing, column_spacing = first.pixel_spacing
    spacing = (column_spacing, row_spacing, step)
    return SeriesCheck(ImageGeometry(spacing, tuple(float(v) for v in first.position),
                                     tuple(float(v) for v in direction.ravel())), None)
