"""Which files of a prediction input folder make up which case, matched to the model's channels by
name, and reading a case's channels.

A file's channel is never guessed from a name pattern that no dataset.json confirms:

- nnU-Net naming, `{case}_{channel:04d}{file_ending}`, is read only for files ending in the
  dataset's `file_ending`. In a raw dataset's `imagesTr`/`imagesTs` (its dataset.json beside the
  folder) the number is a channel of that dataset, matched to the model's channel of the same
  name: a PNG-only dataset's channel 0 is the PNG that a CT+PNG model reads as its channel 1.
  Anywhere else the number is the model's own channel, as nnU-Net assumes.
- DICOM and PNG files are channels by kind, as in the TEKNOFEST release: a DICOM is the `CT`
  channel (Hounsfield units), a PNG the `PNG` channel, and the whole stem is the case (`11403.dcm`
  and `11403.png` are case 11403; `slice_0001.png` is case slice_0001). A NIfTI file without a
  channel number is the only channel of a single-channel model.
- Files whose case or channel cannot be told so (a number that is no channel, an nnU-Net case
  lacking a channel the model reads, two files for one channel, ...) make one error that lists
  them and says how to name them: nothing is predicted from a guess.

Only the channels the plans read are needed; files of other channels are not read. A case of
DICOM/PNG slices that lacks a needed channel (a PNG without its DICOM, for a model reading both)
cannot be predicted, and the other cases are.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdmcunet.imageio import DICOM_SUFFIXES, ImageGeometry, read_slice_with_geometry
from sdmcunet.imageio.simpleitk_io import NIFTI_SUFFIXES, is_nifti
from sdmcunet.raw_dataset import DATASET_FILE, DatasetJson, load_dataset_json
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.listing import listed

CHANNEL_NUMBER = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
RAW_IMAGE_FOLDERS = ("imagesTr", "imagesTs")  # folders whose parent's dataset.json numbers their channels
CHANNEL_OF_KIND = {"dicom": "CT", "png": "PNG"}  # TEKNOFEST-style files: the channel each kind of file is


@dataclass(frozen=True)
class InputCase:
    name: str
    files: dict[int, Path]  # the model's raw channel index -> file
    label_ending: str  # the output label map's ending: NIfTI for NIfTI input, PNG otherwise


@dataclass
class InputListing:
    cases: dict[str, InputCase]
    problems: dict[str, str]  # case -> why it cannot be predicted
    ignored: list[str]  # files of no supported kind


@dataclass(frozen=True)
class ChannelNumbering:
    """How the channel numbers of nnU-Net names in an input folder are read."""

    file_ending: str
    channel_names: dict[int, str]  # number -> channel name
    dataset_json: Path | None  # the input's own dataset.json; None: the model's numbering

    def describe(self) -> str:
        channels = ", ".join(f"{number} {name}" for number, name in sorted(self.channel_names.items()))
        if self.dataset_json is None:
            return f"the model's channels ({channels})"
        return f"the channels of {self.dataset_json} ({channels})"


@dataclass
class _CaseFiles:
    """The files found for one case."""

    channels: dict[int, Path] = field(default_factory=dict)  # the model's channel -> file
    numbered: list[str] = field(default_factory=list)  # its files named with a channel number


def channel_numbering(folder: Path, model: DatasetJson) -> ChannelNumbering:
    """The numbering of the input's own dataset.json for a raw dataset's images folder, the model's elsewhere."""
    folder = folder.resolve()
    if folder.name in RAW_IMAGE_FOLDERS and (folder.parent / DATASET_FILE).is_file():
        dataset = load_dataset_json(folder.parent)
        return ChannelNumbering(dataset.file_ending, dataset.channel_names, folder.parent / DATASET_FILE)
    return ChannelNumbering(model.file_ending, model.channel_names, None)


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
    for suffix in (*NIFTI_SUFFIXES, ".png", *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _model_channel(name: str, model_channels: dict[int, str]) -> int | None:
    """The model's channel called `name` (in any case), None when the model has none."""
    return next((index for index, model_name in model_channels.items() if model_name.upper() == name.upper()), None)


def _case_and_channel(path: Path, kind: str, numbering: ChannelNumbering,
                      model_channels: dict[int, str]) -> tuple[str, int | None, bool] | str:
    """(case, the model's channel or None if the model has no such channel, named with a channel number) of a
    file, or why they cannot be told."""
    numbered = (CHANNEL_NUMBER.match(path.name.removesuffix(numbering.file_ending))
                if path.name.endswith(numbering.file_ending) else None)
    if numbered:
        number = int(numbered["channel"])
        if number not in numbering.channel_names:
            return f"{number} is not a channel number of {numbering.describe()}"
        return numbered["case"], _model_channel(numbering.channel_names[number], model_channels), True
    if kind in CHANNEL_OF_KIND:
        return _stem(path), _model_channel(CHANNEL_OF_KIND[kind], model_channels), False
    if numbering.dataset_json is None and len(model_channels) == 1:
        return _stem(path), next(iter(model_channels)), False
    return "a NIfTI file without a channel number"


def _lacking(case: str, missing: set[int], model_channels: dict[int, str]) -> str:
    names = ", ".join(model_channels[channel] for channel in sorted(missing))
    return f"the model reads channel(s) {names}, which case {case} lacks"


def _unclear_files_error(folder: Path, unclear: list[str], numbering: ChannelNumbering) -> SDMCError:
    raw_dataset_hint = ("" if numbering.dataset_json else
                        ", or predict a raw dataset's imagesTr/imagesTs folder, whose dataset.json beside it numbers "
                        "its channels")
    return SDMCError(
        f"{folder}: cannot tell the case and channel of {len(unclear)} file(s), so nothing was predicted: "
        f"{listed(unclear, separator='; ')}. Name nnU-Net-style files {{case}}_{{channel:04d}}{numbering.file_ending} "
        f"with {numbering.describe()}{raw_dataset_hint}; DICOM (CT) and PNG slices of one case share their stem "
        f"(11403.dcm, 11403.png)")


def find_input_cases(folder: Path, model: DatasetJson, needed_channels: set[int]) -> InputListing:
    """The cases of `folder`, each with the files of the model's channels in `needed_channels`.

    An error listing every file whose case or channel cannot be told (see the module's docstring).
    """
    if not folder.is_dir():
        raise SDMCError(f"{folder}: input folder not found")
    numbering = channel_numbering(folder, model)
    found: dict[str, _CaseFiles] = {}
    unclear, ignored = [], []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        kind = _kind(path)
        if kind is None:
            ignored.append(path.name)
            continue
        interpreted = _case_and_channel(path, kind, numbering, model.channel_names)
        if isinstance(interpreted, str):
            unclear.append(f"{path.name}: {interpreted}")
            continue
        case, channel, numbered = interpreted
        files = found.setdefault(case, _CaseFiles())
        if numbered:
            files.numbered.append(path.name)
        if channel is None:  # a channel the model does not have, so does not read
            continue
        if channel in files.channels:
            unclear.append(f"{path.name}: a second file for channel {model.channel_names[channel]} of case {case} "
                           f"(with {files.channels[channel].name})")
            continue
        files.channels[channel] = path
    cases, problems = {}, {}
    for case, files in found.items():
        if missing := needed_channels - set(files.channels):
            if files.numbered:  # its channel numbers may be another dataset's: never a case of its own
                unclear.append(f"{', '.join(files.numbered)}: {_lacking(case, missing, model.channel_names)}")
            else:
                problems[case] = f"{_lacking(case, missing, model.channel_names)} in {folder}"
            continue
        used = {channel: path for channel, path in sorted(files.channels.items()) if channel in needed_channels}
        ending = ".nii.gz" if any(is_nifti(path.name) for path in used.values()) else ".png"
        cases[case] = InputCase(case, used, ending)
    if unclear:
        raise _unclear_files_error(folder, unclear, numbering)
    return InputListing(cases, problems, ignored)


def read_case_channels(case: InputCase, n_channels: int) -> tuple[np.ndarray, ImageGeometry | None]:
    """(raw channels, H, W) float32, zeros in the channels the model does not read, and where the slice's
    pixels lie: the geometry of its first channel file that records one (None for PNG alone)."""
    arrays, geometry = {}, None
    for channel, path in sorted(case.files.items()):
        arrays[channel], file_geometry = read_slice_with_geometry(path)
        geometry = geometry or file_geometry
    shapes = {path.name: arrays[channel].shape for channel, path in case.files.items()}
    if len(set(shapes.values())) > 1:
        raise SDMCError(f"case {case.name}: its channel files differ in shape: {shapes}")
    shape = next(iter(shapes.values()))
    raw_channels = np.zeros((n_channels, *shape), dtype=np.float32)
    for channel, array in arrays.items():
        raw_channels[channel] = array
    return raw_channels, geometry
