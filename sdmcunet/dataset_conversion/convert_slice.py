"""One TEKNOFEST slice -> one raw case: CT channel (HU), PNG channel and label map."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdmcunet.dataset_conversion.overlay import label_map_from_overlay
from sdmcunet.dataset_conversion.png_window import WindowStatistics
from sdmcunet.dataset_conversion.teknofest_layout import SourceSlice
from sdmcunet.imageio import grey_channel, read_dicom_slice, read_png, write_image, write_label_map
from sdmcunet.labels import NON_STROKE
from sdmcunet.raw_dataset import case_name_problem, image_file_name, label_file_name
from sdmcunet.utils.errors import OutputWriteError, SDMCError

FILE_ENDING = ".nii.gz"
CT_CHANNELS = {0: "CT", 1: "PNG"}  # HU from the DICOM, and the organisers' PNG (the published input)
PNG_ONLY_CHANNELS = {0: "PNG"}


class SliceSkipped(Exception):
    """This slice cannot be converted; the message says why (it goes into the report)."""


@dataclass
class CaseRecord:
    case: str
    label_class: int  # the class of the folder the slice came from
    labels_present: list[int]
    shape: tuple[int, int]
    spacing: tuple[float, float]
    patient_id: str | None = None
    study_uid: str | None = None
    notes: list[str] = field(default_factory=list)
    # how the PNG's grey follows the DICOM's HU on this slice (slices with both files), to measure the window
    png_window_statistics: WindowStatistics | None = None


def convert_slice(source: SourceSlice, with_dicom: bool, dataset_dir: Path) -> CaseRecord:
    """Write the case files of `source` into `dataset_dir` and describe what was written."""
    if problem := case_name_problem(source.stem, FILE_ENDING):  # before any of its files is written
        raise SliceSkipped(problem)
    required = ["png", "dicom"] if with_dicom else ["png"]
    if source.folder_class != NON_STROKE:
        required.append("overlay")
    missing = [modality.upper() for modality in required if modality not in source.files]
    if missing:
        raise SliceSkipped(f"{' and '.join(missing)} missing for this slice")
    try:
        return _convert(source, with_dicom, dataset_dir)
    except OutputWriteError:  # a full disk is the end of the run (a re-run resumes), never a skipped slice
        raise
    except SDMCError as error:  # unreadable input: a report entry, not the end of the run
        raise SliceSkipped(str(error)) from None


def _read_8_bit_png(path: Path) -> np.ndarray:
    """The release's PNG and OVERLAY files are 8-bit pictures; a 16-bit one (an export of other
    values) would be compared with its 8-bit counterpart and paint the whole slice as lesion."""
    picture = read_png(path)
    if picture.dtype != np.uint8:
        raise SliceSkipped(f"{path}: a {picture.dtype.itemsize * 8}-bit PNG; the release's PNG and OVERLAY files "
                           f"are 8-bit pictures: export it with 8 bits per channel")
    return picture


def _convert(source: SourceSlice, with_dicom: bool, dataset_dir: Path) -> CaseRecord:
    png = _read_8_bit_png(source.files["png"])
    grey = grey_channel(png)
    notes: list[str] = []
    if png.ndim == 3 and not (np.array_equal(png[..., 0], png[..., 1]) and np.array_equal(png[..., 0], png[..., 2])):
        notes.append("PNG is not grey (R, G, B differ); channel 0 kept, as the published model reads it")
    record = CaseRecord(source.stem, source.folder_class, [], grey.shape, (1.0, 1.0), notes=notes)
    channels = [grey]
    if with_dicom:
        hounsfield = _ct_channel(source, grey.shape, record)
        record.png_window_statistics = WindowStatistics.of_pixels(hounsfield, grey)
        channels.insert(0, hounsfield)
    label_map = _label_map(source, png, record)
    record.labels_present = sorted(int(value) for value in np.unique(label_map))

    images_dir, labels_dir = dataset_dir / "imagesTr", dataset_dir / "labelsTr"
    for channel, array in enumerate(channels):
        write_image(array, images_dir / image_file_name(source.stem, channel, FILE_ENDING), record.spacing)
    write_label_map(label_map, labels_dir / label_file_name(source.stem, FILE_ENDING), record.spacing)
    return record


def _ct_channel(source: SourceSlice, shape: tuple[int, int], record: CaseRecord) -> np.ndarray:
    dicom = read_dicom_slice(source.files["dicom"])
    if dicom.hounsfield.shape != shape:
        raise SliceSkipped(f"DICOM is {dicom.hounsfield.shape} but the PNG is {shape}; they must be one slice")
    record.notes.extend(dicom.notes)
    record.patient_id, record.study_uid = dicom.patient_id, dicom.study_uid
    if dicom.spacing is not None:
        record.spacing = dicom.spacing
    hounsfield = dicom.hounsfield
    # Integer HU (slope 1, integer intercept: the usual case) store exactly and compactly as int16.
    if np.array_equal(hounsfield, np.round(hounsfield)) and -32768 <= hounsfield.min() and hounsfield.max() <= 32767:
        return hounsfield.astype(np.int16)
    return hounsfield


def _label_map(source: SourceSlice, png: np.ndarray, record: CaseRecord) -> np.ndarray:
    if source.folder_class == NON_STROKE:
        return np.zeros(record.shape, dtype=np.uint8)
    overlay_path = source.files["overlay"]
    overlay = _read_8_bit_png(overlay_path)
    if overlay.shape[:2] != png.shape[:2]:
        raise SliceSkipped(f"OVERLAY {overlay_path.name} is {overlay.shape[:2]} but the PNG is {png.shape[:2]}")
    reading = label_map_from_overlay(png, overlay, fallback_class=source.folder_class)
    if reading.n_lesions == 0:
        raise SliceSkipped(f"OVERLAY {overlay_path.name} is identical to its PNG: no lesion painted on a lesion slice")
    record.notes.extend(reading.ambiguities)
    return reading.label_map
