"""The raw dataset contract (docs/design.md §3): nnU-Net v2 folder, file names and `dataset.json`.

A raw dataset lives in `<raw root>/Dataset{id:03d}_{Name}/` with `imagesTr/{case}_{channel:04d}
{file_ending}`, `labelsTr/{case}{file_ending}` and a `dataset.json`; nnU-Net v2 reads ours and
we read its.
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdmcunet.imageio import grey_channel, read_nifti, read_png
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json

DATASET_FILE = "dataset.json"  # of a raw dataset; preprocessed datasets and model folders keep a copy
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_FOLDER_PATTERN = re.compile(r"^Dataset(\d+)_(.+)$")
FILE_ENDING_PATTERN = re.compile(r"\.[A-Za-z0-9]+(\.[A-Za-z0-9]+)*")
# The organisers' PNG is an 8-bit window of the HU: a PNG-channel model segments DICOM-only input
# when the PNG is remade from HU with that window. The converter measures it on slices that have
# both files and writes it into dataset.json under this key ({"low", "high"} in HU, with the fit's
# slices, pixels and rmse_grey_levels).
PNG_WINDOW_KEY = "png_from_hounsfield"
# The standard brain window (level 40, width 80 HU): the window to assume when no paired
# DICOM and PNG measured one (a PNG-only release, a dataset made elsewhere).
DEFAULT_PNG_WINDOW = (0.0, 80.0)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if dataset_id <= 0:
        raise SDMCError(f"dataset id must be a positive integer, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise SDMCError(f"dataset name {name!r} may hold only letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def dataset_id_of(folder_name: str) -> int | None:
    """The id of a `Dataset{id}_{Name}` folder (or dataset) name; None for another name."""
    match = _FOLDER_PATTERN.match(folder_name)
    return int(match[1]) if match else None


def folders_with_id(root: Path, dataset_id: int) -> list[Path]:
    """Every `Dataset{id}_*` folder in `root` (there should be at most one)."""
    if not root.is_dir():
        return []
    return sorted(
        child for child in root.iterdir()
        if child.is_dir() and dataset_id_of(child.name) == dataset_id
    )


def find_dataset(root: Path, dataset_id: int) -> Path:
    """The folder of dataset `dataset_id` in `root`; a clear error when it is missing or ambiguous."""
    matches = folders_with_id(root, dataset_id)
    if not matches:
        raise SDMCError(
            f"no dataset with id {dataset_id} in {root} (expected a folder Dataset{dataset_id:03d}_<Name>); "
            f"make it with sdmc_convert_stroke2021 then sdmc_plan_and_preprocess, or point SDMC_raw / "
            f"SDMC_preprocessed to where it is"
        )
    if len(matches) > 1:
        raise SDMCError(f"dataset id {dataset_id} is ambiguous in {root}: {', '.join(m.name for m in matches)}")
    return matches[0]


NAME_MAX_BYTES = 255  # the longest file name the usual file systems take


def case_name_problem(case: object, file_ending: str = ".nii.gz") -> str | None:
    """Why `case` cannot name a case's files, or None when it can.

    Case names come from users' files (slice stems, holdout.json, splits, dataset folders) and become
    file names: they must not reach outside their folder ('/', '..'), hide (a leading '.'), hold
    control characters, or make a file name longer than the file system takes."""
    if not isinstance(case, str) or not case:
        return f"a case name must be a non-empty string, got {case!r}"
    if "/" in case or "\\" in case or any(ord(character) < 32 for character in case):
        return f"case name {case!r} holds a path separator or a control character"
    if case.startswith("."):
        return f"case name {case!r} starts with '.' (a hidden file, or a way out of its folder)"
    if len(image_file_name(case, 0, file_ending).encode()) > NAME_MAX_BYTES:
        return f"case name {case[:40]!r}... makes file names longer than {NAME_MAX_BYTES} bytes"
    return None


def image_file_name(case: str, channel: int, file_ending: str) -> str:
    return f"{case}_{channel:04d}{file_ending}"


def label_file_name(case: str, file_ending: str) -> str:
    return f"{case}{file_ending}"


def make_dataset_json(channel_names: dict[int, str], labels: dict[str, int], n_training: int,
                      file_ending: str, **extra) -> dict:
    return {
        "channel_names": {str(channel): name for channel, name in channel_names.items()},
        "labels": labels,
        "numTraining": n_training,
        "file_ending": file_ending,
        **extra,
    }


@dataclass
class DatasetJson:
    channel_names: dict[int, str]
    labels: dict[str, int]
    n_training: int
    file_ending: str
    measured_png_window: tuple[float, float] | None = None  # (low, high) HU; None when none was measured


def load_dataset_json(folder: Path) -> DatasetJson:
    """Read and check `dataset.json` of a raw dataset folder."""
    path = folder / DATASET_FILE
    content = read_json(path)
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise SDMCError(f"{path}: missing key(s) {', '.join(missing)}")
    try:
        channel_names = {int(channel): str(name) for channel, name in content["channel_names"].items()}
        labels = {str(name): int(value) for name, value in content["labels"].items()}
        n_training = int(content["numTraining"])
    except (AttributeError, TypeError, ValueError) as error:
        raise SDMCError(f"{path}: channel_names, labels or numTraining malformed ({error})") from None
    if sorted(channel_names) != list(range(len(channel_names))):
        raise SDMCError(f"{path}: channel_names must be numbered 0..{len(channel_names) - 1}")
    if labels.get("background") != 0:
        raise SDMCError(f"{path}: labels must map 'background' to 0")
    if sorted(labels.values()) != list(range(len(labels))):
        raise SDMCError(f"{path}: label values must be consecutive integers from 0, got {sorted(labels.values())}")
    file_ending = str(content["file_ending"])
    if not FILE_ENDING_PATTERN.fullmatch(file_ending):  # it becomes part of every file name
        raise SDMCError(f"{path}: file_ending must be a file suffix such as '.nii.gz' or '.png', got {file_ending!r}")
    return DatasetJson(channel_names, labels, n_training, file_ending, measured_png_window(content, path))


def measured_png_window(content: dict, source: Path | str) -> tuple[float, float] | None:
    """The (low, high) HU window measured for the PNG channel in the dataset.json `content` read from
    `source`, or None when the dataset has none."""
    if PNG_WINDOW_KEY not in content:
        return None
    window = content[PNG_WINDOW_KEY]
    bounds = [window.get(key) for key in ("low", "high")] if isinstance(window, dict) else []
    if not (len(bounds) == 2 and all(_is_finite_number(bound) for bound in bounds) and bounds[0] < bounds[1]):
        raise SDMCError(f"{source}: {PNG_WINDOW_KEY} must be an object with finite numbers low < high (the HU "
                        f"the PNG shows black and white), got {window!r}")
    return float(bounds[0]), float(bounds[1])


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def png_from_hounsfield(hounsfield: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """The PNG channel made from HU: float32 grey values exactly as an 8-bit export of `window`
    (low, high) makes them, so a PNG-channel model sees what it was trained on."""
    low, high = window
    grey = (np.asarray(hounsfield, dtype=np.float64) - low) * 255 / (high - low)
    return np.rint(np.clip(grey, 0, 255)).astype(np.float32)


def read_raw_image(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """One raw image or label file as a 2D array and its (row, column) spacing (None for PNG)."""
    if path.name.lower().endswith(".png"):
        return grey_channel(read_png(path)), None
    return read_nifti(path)


@dataclass
class RawCase:
    images: list[Path]  # one file per channel, in channel order
    label: Path | None  # None for unlabelled (test) images


def training_cases(folder: Path, dataset: DatasetJson) -> dict[str, RawCase]:
    """The training cases of a raw dataset, from the label files; images must be complete."""
    labels_dir = folder / "labelsTr"
    if not labels_dir.is_dir():
        raise SDMCError(f"{labels_dir}: folder missing; is {folder} a raw dataset?")
    cases = {}
    for label in sorted(labels_dir.glob(f"*{dataset.file_ending}")):
        case = label.name[: -len(dataset.file_ending)]
        images = [folder / "imagesTr" / image_file_name(case, c, dataset.file_ending) for c in dataset.channel_names]
        if missing := [image.name for image in images if not image.is_file()]:
            raise SDMCError(f"{folder}: case {case} lacks {', '.join(missing)}; run sdmc_verify_dataset")
        cases[case] = RawCase(images, label)
    if not cases:
        raise SDMCError(f"{labels_dir}: no label files ending in {dataset.file_ending}")
    return cases
