"""One DICOM CT slice -> Hounsfield units, pixel spacing and the identifiers used for splits.

Uncompressed pixel data is read at its full allocated width instead of through pydicom's
`pixel_array`, because pydicom masks values to `BitsStored`: the Stroke2021 release has headers
that say 12 bits while the values need 16, and masking would silently corrupt bone and lesions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdmcunet.utils.errors import SDMCError

if TYPE_CHECKING:  # imported on first use: training and inference on arrays need no DICOM reader
    import pydicom

CODEC_HINT = (
    "install a decoder for it: pip install 'sdmcunet[dicom-codecs]' "
    "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg) or pip install python-gdcm"
)
REQUIRED_KEYWORDS = ("PixelData", "Rows", "Columns", "BitsAllocated")
DICOM_SUFFIXES = (".dcm", ".dicom")  # lower case; the only suffixes read as DICOM (besides none)
MAX_USUAL_SLOPE = 10.0  # CT files say 1 (some 0.5 or 2); a larger or negative slope is noted


def _header_value_errors() -> tuple[type[Exception], ...]:
    """pydicom converts header values when they are first used: a damaged value (or value representation)
    fails there, not in dcmread."""
    from pydicom.errors import BytesLengthException

    return ValueError, TypeError, OverflowError, NotImplementedError, BytesLengthException


@dataclass
class DicomSlice:
    hounsfield: np.ndarray  # float32, rows x columns
    spacing: tuple[float, float] | None  # (row, column) in mm; None when the header has none
    patient_id: str | None
    study_uid: str | None
    notes: list[str] = field(default_factory=list)  # repairs a user should know about


def read_dicom_slice(path: str | Path, require_ct: bool = True) -> DicomSlice:
    """Read a single-frame greyscale DICOM slice and convert it to Hounsfield units."""
    path = Path(path)
    dataset = read_dataset(path)
    try:
        return _ct_slice(path, dataset, require_ct)
    except _header_value_errors() as error:
        raise SDMCError(f"{path}: a DICOM header value is unreadable ({type(error).__name__}: {error})") from None


def _ct_slice(path: Path, dataset: pydicom.Dataset, require_ct: bool) -> DicomSlice:
    modality = dataset.get("Modality")
    if require_ct and modality != "CT":
        raise SDMCError(f"{path}: modality is {modality or 'missing'}, expected CT (Hounsfield units)")
    if int(dataset.get("NumberOfFrames", 1) or 1) != 1 or int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise SDMCError(f"{path}: expected one greyscale frame (a CT slice), found a multi-frame or colour image")
    notes: list[str] = []
    stored = _stored_values(path, dataset, notes)
    slope = _header_number(dataset, "RescaleSlope", 1.0)
    intercept = _header_number(dataset, "RescaleIntercept", 0.0)
    if slope == 0:
        raise SDMCError(f"{path}: RescaleSlope is 0, which would make every pixel {intercept} HU")
    if not 0 < slope <= MAX_USUAL_SLOPE:
        notes.append(f"RescaleSlope {slope:g} is unusual for CT (1 in almost every scanner's files): "
                     f"check the Hounsfield units")
    hounsfield = (stored.astype(np.float64) * slope + intercept).astype(np.float32)
    # A NaN or infinite slope would reach the NIfTI files, where ITK reads it back as 0: refuse it here.
    if not np.isfinite(hounsfield).all():
        raise SDMCError(f"{path}: RescaleSlope {slope} and RescaleIntercept {intercept} give NaN or infinite "
                        f"Hounsfield units")
    return DicomSlice(
        hounsfield=hounsfield,
        spacing=_spacing(dataset, notes),
        patient_id=str(dataset.PatientID) if dataset.get("PatientID") else None,
        study_uid=str(dataset.StudyInstanceUID) if dataset.get("StudyInstanceUID") else None,
        notes=notes,
    )


def _header_number(dataset: pydicom.Dataset, keyword: str, absent: float) -> float:
    """A numeric header value; `absent` where the header has none (or an empty one)."""
    value = dataset.get(keyword)
    return absent if value is None or value == "" else float(value)


def read_dataset(path: Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """A DICOM file's dataset (its header alone with `stop_before_pixels`); an error naming the file when it
    is no DICOM image or cannot be read."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise SDMCError(f"{path}: file not found") from None
    except InvalidDicomError as error:
        raise SDMCError(f"{path}: not a DICOM file ({error})") from None
    except (EOFError, OSError, KeyError, struct.error, *_header_value_errors()) as error:
        raise SDMCError(f"{path}: unreadable or truncated DICOM ({type(error).__name__}: {error})") from None
    required = [keyword for keyword in REQUIRED_KEYWORDS if not (stop_before_pixels and keyword == "PixelData")]
    if missing := [keyword for keyword in required if keyword not in dataset]:
        raise SDMCError(f"{path}: DICOM header lacks {', '.join(missing)}: not an image")
    return dataset


def _stored_values(path: Path, dataset: pydicom.Dataset, notes: list[str]) -> np.ndarray:
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if rows < 1 or columns < 1:
        raise SDMCError(f"{path}: empty image ({rows} rows, {columns} columns)")
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if transfer_syntax is not None and transfer_syntax.is_compressed:
        return _decoded_values(path, dataset, transfer_syntax)
    bits_allocated = int(dataset.BitsAllocated)
    if bits_allocated not in (8, 16, 32):
        raise SDMCError(f"{path}: BitsAllocated {bits_allocated} is not supported (8, 16 or 32)")
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    byte_order = "<" if transfer_syntax is None or transfer_syntax.is_little_endian else ">"
    dtype = np.dtype(f"{byte_order}{'i' if signed else 'u'}{bits_allocated // 8}")
    raw = dataset.PixelData
    needed_bytes = rows * columns * dtype.itemsize
    if len(raw) < needed_bytes:
        raise SDMCError(f"{path}: pixel data is truncated ({len(raw)} of {needed_bytes} bytes)")
    stored = np.frombuffer(raw, dtype=dtype, count=rows * columns).reshape(rows, columns)
    _note_bits_stored_mismatch(dataset, stored, signed, notes)
    return stored


def _note_bits_stored_mismatch(dataset, stored: np.ndarray, signed: bool, notes: list[str]) -> None:
    bits_stored = int(dataset.get("BitsStored", dataset.BitsAllocated))
    low, high = int(stored.min()), int(stored.max())
    needed = max(high.bit_length(), (-low - 1).bit_length() if low < 0 else 0) + (1 if signed else 0)
    if needed > bits_stored:
        notes.append(
            f"header says BitsStored={bits_stored} but the values need {needed} bits; "
            f"kept the full {dataset.BitsAllocated}-bit values (range {low}..{high})"
        )


def _decoded_values(path: Path, dataset: pydicom.Dataset, transfer_syntax) -> np.ndarray:
    try:
        return np.asarray(dataset.pixel_array)
    except (RuntimeError, NotImplementedError, ImportError) as error:
        raise SDMCError(
            f"{path}: pixel data is compressed ({transfer_syntax.name}) and no installed decoder "
            f"can read it; {CODEC_HINT} [{str(error).splitlines()[0]}]"
        ) from None
    except (ValueError, EOFError) as error:
        raise SDMCError(f"{path}: compressed pixel data is corrupt or truncated ({error})") from None


def _spacing(dataset: pydicom.Dataset, notes: list[str]) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    notes.append("no valid PixelSpacing in the header")
    return None
