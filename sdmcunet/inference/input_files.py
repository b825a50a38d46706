"""Which files of a prediction input folder make up which case, and reading a case's channels.

A case's files are found by name:

- nnU-Net naming, `{case}_{channel:04d}{ending}` (a raw dataset's `imagesTs`): the channel by
  its number;
- otherwise by kind, the files of one slice sharing their stem as in the TEKNOFEST release
  (`11403.dcm`, `11403.png`): a DICOM is the dataset's `CT` channel (Hounsfield units), a PNG
  its `PNG` channel, a NIfTI the only channel of a single-channel dataset.

Only the raw channels the plans read are needed; the others are ignored.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdmcunet.imageio import read_slice
from sdmcunet.imageio.simpleitk_io import is_nifti
from sdmcunet.utils.errors import SDMCError

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class InputCase:
    name: str
    files: dict[int, Path]  # raw channel index -> file
    label_ending: str  # the output label map's ending: NIfTI for NIfTI input, PNG otherwise


@dataclass
class InputListing:
    cases: dict[str, InputCase]
    problems: dict[str, str]  # file or case -> why it cannot be predicted
    ignored: list[str]  # files of no supported kind


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if is_nifti(name):
        return "nifti"
    if name.endswith(".png"):
        return "png"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    return None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".png", *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _channel_of(path: Path, kind: str, channel_names: dict[int, str]) -> tuple[str, int] | str:
    """(case, channel) of a file, or why it has none."""
    stem = _stem(path)
    numbered = CHANNEL_SUFFIX.match(stem)
    if numbered and int(numbered["channel"]) in channel_names:
        return numbered["case"], int(numbered["channel"])
    by_name = {name.upper(): channel for channel, name in channel_names.items()}
    if kind == "dicom" and "CT" in by_name:
        return stem, by_name["CT"]
    if kind == "png" and "PNG" in by_name:
        return stem, by_name["PNG"]
    if len(channel_names) == 1:
        return stem, 0
    return (f"cannot tell which of the model's channels ({', '.join(channel_names.values())}) this {kind} file "
            f"is; name it {{case}}_{{channel:04d}}")


def find_input_cases(folder: Path, channel_names: dict[int, str], needed_channels: set[int]) -> InputListing:
    if not folder.is_dir():
        raise SDMCError(f"{folder}: input folder not found")
    files: dict[str, dict[int, Path]] = {}
    problems, ignored = {}, []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        kind = _kind(path)
        if kind is None:
            ignored.append(path.name)
            continue
        found = _channel_of(path, kind, channel_names)
        if isinstance(found, str):
            problems[str(path)] = found
            continue
        case, channel = found
        if channel in files.setdefault(case, {}):
            problems[str(path)] = f"a second file for channel {channel} of case {case} ({files[case][channel].name})"
            continue
        files[case][channel] = path
    cases = {}
    for case, channels in files.items():
        missing = sorted(needed_channels - set(channels))
        if missing:
            names = ", ".join(channel_names[channel] for channel in missing)
            problems[case] = f"the model reads channel(s) {names}, which case {case} lacks in {folder}"
            continue
        used = {channel: path for channel, path in channels.items() if channel in needed_channels}
        ending = ".nii.gz" if any(is_nifti(path.name) for path in used.values()) else ".png"
        cases[case] = InputCase(case, used, ending)
    return InputListing(cases, problems, ignored)


def read_case_channels(case: InputCase, n_channels: int) -> tuple[np.ndarray, tuple[float, float] | None]:
    """(raw channels, H, W) float32, zeros in the channels the model does not read, and the spacing."""
    arrays, spacing = {}, None
    for channel, path in case.files.items():
        arrays[channel], file_spacing = read_slice(path)
        spacing = spacing or file_spacing
    shapes = {path.name: arrays[channel].shape for channel, path in case.files.items()}
    if len(set(shapes.values())) > 1:
        raise SDMCError(f"case {case.name}: its channel files differ in shape: {shapes}")
    shape = next(iter(shapes.values()))
    raw_channels = np.zeros((n_channels, *shape), dtype=np.float32)
    for channel, array in arrays.items():
        raw_channels[channel] = array
    return raw_channels, spacing
