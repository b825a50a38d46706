"""`sdmc_make_synthetic`: a synthetic stroke CT dataset in the exact TEKNOFEST-2021 layout.

    DIR/Training/Hemorrhagic/{PNG,DICOM,OVERLAY}/<stem>.{png,dcm,png}
    DIR/Training/Ischemic/{PNG,DICOM,OVERLAY}/<stem>.{png,dcm,png}
    DIR/Training/Non-Stroke/{PNG,DICOM}/<stem>.{png,dcm}

made offline from `phantom.py`, for the demo and the tests. A slice goes to the folder of its
lesion class, a slice with both kinds to Hemorrhagic (its overlay shows both outline colours),
a slice without a lesion to Non-Stroke (no overlay). Stems are numeric, unique across classes
and shuffled, so only the DICOM PatientID tells which slices belong to one patient.

The PNG is the brain window of the HU image as 8-bit grey stored as RGBA (R = G = B, alpha
255), like the real files. The window level 40 / width 80 HU is an assumption: the organisers
do not document theirs. The OVERLAY is that PNG painted by `overlay.draw_overlay` with a fill
alpha drawn per slice in [0.5, 0.75].

The DICOM is uncompressed CT Image Storage (Explicit VR Little Endian), BitsAllocated 16,
stored value = HU - RescaleIntercept with RescaleSlope 1: unsigned (PixelRepresentation 0,
intercept -1024) or signed (1, intercept 0), varying by patient. It reproduces the release's
BitsStored pitfall: on every third patient (index 2, 5, 8, ...) a dense bone focus of 2500 to
3000 HU is stored as signed values above 2047, yet the header says BitsStored 12 / HighBit 11.
The stored values are the truth (HU = stored * slope + intercept); a reader that trusts
BitsStored and masks or sign-extends the high bits corrupts them (pydicom 3's `pixel_array`
does: the focus comes back at about 2045 and below instead of 2500 to 3000).

`synthetic.json` in DIR records the parameters: running again with the same ones completes an
interrupted run (slices whose files are all there are skipped); any other non-empty
DIR is refused, so a user's data is never overwritten.
"""

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from sdmcunet.dataset_conversion.overlay import draw_overlay
from sdmcunet.dataset_conversion.phantom import Patient, Stream, draw_patient, render_slice, seeded_rng
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC
from sdmcunet.utils.cli import console_entry, positive_int, random_seed
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_output, atomic_write_json, read_json
from sdmcunet.utils.progress import progress_bar

CLASS_FOLDERS = ("Hemorrhagic", "Ischemic", "Non-Stroke")
MARKER_NAME = "synthetic.json"
MARKER_FORMAT = 1
WINDOW_LEVEL_HU, WINDOW_WIDTH_HU = 40, 80
FILL_ALPHA_RANGE = (0.5, 0.75)
FIRST_STEM = 10000
MIN_SIZE = 64
# Patient kinds and their shares. A lesion shows on about half of its patient's slices
# (measured: 52% for one infarct, 77% for two, 46% for a bleed), so these shares give about
# 67% non-stroke, 17% ischemic and 16% hemorrhagic slices, as in the release.
PATIENT_KINDS = ((), (ISCHEMIC,), (ISCHEMIC, ISCHEMIC), (HEMORRHAGIC,), (ISCHEMIC, HEMORRHAGIC))
PATIENT_KIND_SHARES = (0.39, 0.20, 0.07, 0.30, 0.04)
REQUIRED_KINDS = ((), (ISCHEMIC,), (HEMORRHAGIC,))  # given to 3 patients: every class shows
DENSE_FOCUS_EVERY = 3  # patients 2, 5, 8, ... carry the BitsStored pitfall


@dataclass(frozen=True)
class SliceRecord:
    """One slice of the dataset: its file stem and where it comes from."""

    stem: int
    patient: Patient
    slice_index: int


@dataclass
class SyntheticSummary:
    """What a run produced, for the closing message and for callers."""

    output_dir: Path
    patients: int
    slices_per_class: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS_FOLDERS, 0))
    already_there: int = 0  # slices found complete from an earlier, interrupted run
    seconds: float = 0.0

    def describe(self) -> str:
        counts = ", ".join(f"{count} {name}" for name, count in self.slices_per_class.items())
        total = sum(self.slices_per_class.values())
        return (f"{total} slices of {self.patients} patients in {self.output_dir} ({counts}); "
                f"{self.already_there} were already there; {self.seconds:.1f} s")


def plan_slices(n_patients: int, seed: int, size: int) -> list[SliceRecord]:
    """Every slice of the dataset with its stem, in patient order (pure, no files)."""
    patients = [draw_patient(seed, index, size, kind, dense_focus=index % DENSE_FOCUS_EVERY == 2)
                for index, kind in enumerate(_patient_kinds(n_patients, seed))]
    pairs = [(patient, k) for patient in patients for k in range(patient.n_slices)]
    stems = FIRST_STEM + seeded_rng(seed, Stream.STEMS).permutation(len(pairs))
    return [SliceRecord(int(stem), patient, k) for stem, (patient, k) in zip(stems, pairs)]


def _patient_kinds(n_patients: int, seed: int) -> list[tuple[int, ...]]:
    """Lesion labels per patient; with 3 or more patients each class shows on some slice."""
    rng = seeded_rng(seed, Stream.PATIENT_KINDS)
    choices = rng.choice(len(PATIENT_KINDS), size=n_patients, p=PATIENT_KIND_SHARES)
    if n_patients >= len(REQUIRED_KINDS):
        chosen = rng.choice(n_patients, len(REQUIRED_KINDS), replace=False)
        choices[chosen] = [PATIENT_KINDS.index(kind) for kind in REQUIRED_KINDS]
    return [PATIENT_KINDS[choice] for choice in choices]


def class_folder(label_map: np.ndarray) -> str:
    """The release folder of a slice: hemorrhage wins over ischemia, no lesion is Non-Stroke."""
    if (label_map == HEMORRHAGIC).any():
        return "Hemorrhagic"
    return "Ischemic" if (label_map == ISCHEMIC).any() else "Non-Stroke"


def brain_window(hounsfield: np.ndarray) -> np.ndarray:
    """uint8 grey of the brain window: 0 HU and below black, 80 HU and above white."""
    lowest = WINDOW_LEVEL_HU - WINDOW_WIDTH_HU / 2
    grey = (hounsfield.astype(np.float32) - lowest) * np.float32(255 / WINDOW_WIDTH_HU)
    return np.rint(np.clip(grey, 0, 255)).astype(np.uint8)


def make_synthetic_dataset(output_dir: str | Path, n_patients: int = 30, seed: int = 0, size: int = 512,
                           progress: bool = True) -> SyntheticSummary:
    """Write the dataset (or complete an interrupted run with the same parameters)."""
    # Seeds above 32 bits would alias other entropy lists in SeedSequence.
    if n_patients < 1 or not 0 <= seed < 2**32 or size < MIN_SIZE:
        raise SDMCError(f"need --patients >= 1, 0 <= --seed < 2**32 and --size >= {MIN_SIZE} "
                        f"(got {n_patients}, {seed}, {size})")
    started = time.perf_counter()
    output_dir = Path(output_dir)
    _claim_output_dir(output_dir, {"format": MARKER_FORMAT, "patients": n_patients, "seed": seed, "size": size})
    training = output_dir / "Training"
    summary = SyntheticSummary(output_dir, n_patients)
    records = plan_slices(n_patients, seed, size)
    for record in progress_bar(records, desc="synthetic slices", unit="slice", disable=not progress):
        folder = _finished_folder(training, record.stem)
        if folder is None:
            folder = _write_slice(training, record)
        else:
            summary.already_there += 1
        summary.slices_per_class[folder] += 1
    summary.seconds = time.perf_counter() - started
    return summary


def _claim_output_dir(output_dir: Path, parameters: dict) -> None:
    """Refuse a non-empty folder unless it is our own output with the same parameters."""
    marker = output_dir / MARKER_NAME
    if output_dir.exists() and not output_dir.is_dir():
        raise SDMCError(f"{output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not marker.is_file() or read_json(marker) != parameters:
            wanted = f"--patients {parameters['patients']} --seed {parameters['seed']} --size {parameters['size']}"
            raise SDMCError(f"{output_dir}: not empty and not a synthetic dataset made with {wanted}; "
                            "choose a new or empty folder")
        return
    atomic_write_json(marker, parameters)


def _slice_paths(training: Path, folder: str, stem: int) -> dict[str, Path]:
    """The files of one slice in class `folder`, by kind."""
    kinds = ("DICOM", "PNG") if folder == "Non-Stroke" else ("DICOM", "OVERLAY", "PNG")
    return {kind: training / folder / kind / f"{stem}.{'dcm' if kind == 'DICOM' else 'png'}" for kind in kinds}


def _finished_folder(training: Path, stem: int) -> str | None:
    """The class folder of a slice whose files are all there from an earlier run, if any."""
    return next((folder for folder in CLASS_FOLDERS
                 if all(path.is_file() for path in _slice_paths(training, folder, stem).values())), None)


def _write_slice(training: Path, record: SliceRecord) -> str:
    """Render one slice and write its DICOM, PNG and (lesion slices only) OVERLAY."""
    phantom = render_slice(record.patient, record.slice_index)
    folder = class_folder(phantom.label_map)
    paths = _slice_paths(training, folder, record.stem)
    grey = brain_window(phantom.hounsfield)
    _write_dicom(paths["DICOM"], record, phantom.hounsfield)
    if "OVERLAY" in paths:
        rng = record.patient.rng(Stream.OVERLAY, record.slice_index)
        overlay = draw_overlay(grey, phantom.label_map, fill_alpha=rng.uniform(*FILL_ALPHA_RANGE), rng=rng)
        _write_png(paths["OVERLAY"], overlay)
    _write_png(paths["PNG"], np.dstack([grey, grey, grey, np.full_like(grey, 255)]))
    return folder


def _write_png(target: Path, rgba: np.ndarray) -> None:
    with atomic_output(target) as temporary:
        Image.fromarray(rgba).save(temporary, format="PNG")


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["sdmcunet synthetic", *map(str, parts)])


def _stored_values(patient: Patient, hounsfield: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Stored pixel values, RescaleIntercept and the BitsStored the header will claim."""
    pitfall = patient.anatomy.dense_focus_hu is not None  # its values need 13 bits (signed)
    signed = pitfall or bool(patient.rng(Stream.ENCODING).integers(2))
    intercept = 0 if signed else -1024
    stored = (hounsfield.astype(np.int32) - intercept).astype("<i2" if signed else "<u2")
    fits_12_bits = (-2048 <= stored.min() and stored.max() <= 2047) if signed else stored.max() <= 4095
    return stored, intercept, 12 if fits_12_bits or pitfall else 16


def _write_dicom(target: Path, record: SliceRecord, hounsfield: np.ndarray) -> None:
    patient, k = record.patient, record.slice_index
    patient_id = f"SYN{patient.seed}-{patient.index:04d}"
    stored, intercept, bits_stored = _stored_values(patient, hounsfield)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(patient_id, k)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(target), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
    dataset.PatientID, dataset.PatientName = patient_id, f"Synthetic^{patient_id}"
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = _uid(patient_id, "study"), _uid(patient_id, "series")
    dataset.FrameOfReferenceUID = _uid(patient_id, "frame of reference")
    dataset.SeriesNumber, dataset.InstanceNumber = 1, k + 1
    rows, columns = hounsfield.shape
    spacing, level = patient.pixel_spacing_mm, patient.level_mm(k)
    dataset.ImagePositionPatient = [round(-columns / 2 * spacing, 4), round(-rows / 2 * spacing, 4), round(level, 4)]
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
    dataset.SliceThickness, dataset.SliceLocation = patient.slice_thickness_mm, round(level, 4)
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, bits_stored, bits_stored - 1
    dataset.PixelRepresentation = int(stored.dtype.kind == "i")
    dataset.RescaleIntercept, dataset.RescaleSlope, dataset.RescaleType = intercept, 1, "HU"
    dataset.WindowCenter, dataset.WindowWidth = WINDOW_LEVEL_HU, WINDOW_WIDTH_HU
    dataset.PixelData = stored.tobytes()
    with atomic_output(target) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)


@console_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sdmc_make_synthetic",
        description="Write a synthetic brain-CT stroke dataset in the TEKNOFEST-2021 layout "
        "(Training/{Hemorrhagic,Ischemic,Non-Stroke}/{PNG,DICOM,OVERLAY}).")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder to create (new or empty)")
    parser.add_argument("--patients", type=positive_int, default=30, help="number of synthetic patients (default 30)")
    parser.add_argument("--seed", type=random_seed, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--size", type=positive_int, default=512,
                        help="image height in pixels; about 1 in 5 patients is wider (default 512)")
    arguments = parser.parse_args(argv)
    summary = make_synthetic_dataset(arguments.output, arguments.patients, arguments.seed, arguments.size)
    print(f"synthetic dataset: {summary.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
