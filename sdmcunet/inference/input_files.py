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
  and `11403.png` are case 11403; `slice_0001.png` is case slice_0001). A 2D NIfTI file without a
  channel number is the only channel of a single-channel model.
- DICOM files are recognised by content (the `DICM` preamble) as well as by name, so a hospital's
  series of files without an extension is read. DICOM files without a PNG of their stem are
  grouped by SeriesInstanceUID: a series of two or more slices that make a regular volume is one
  case, named by its SeriesInstanceUID, predicted as a volume; a series whose slices do not (a
  missing or duplicated slice, uneven spacing, mixed sizes or orientations, no positions) has its
  slices predicted one by one, with a warning saying why; a series of another modality than CT is
  refused, naming it.
- A NIfTI, NRRD or MetaImage (.mha) volume without a channel number is a CT volume (Hounsfield
  units), one case named by its stem.
- A model that reads the organisers' PNG channel gets it made from the Hounsfield units of a case
  that has no PNG, with the window its plans give (`png_from_hounsfield`).
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

from sdmcunet.imageio import DICOM_SUFFIXES, ImageGeometry, read_dicom_slice, read_slice_with_geometry
from sdmcunet.imageio.dicom_series import check_series, group_series, is_dicom_file, read_dicom_header
from sdmcunet.imageio.simpleitk_io import (
    VOLUME_READERS, image_slices, is_nifti, is_volume_file, read_volume_with_geometry,
)
from sdmcunet.raw_dataset import DATASET_FILE, DatasetJson, case_name_problem, load_dataset_json, png_from_hounsfield
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.listing import listed

CHANNEL_NUMBER = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
RAW_IMAGE_FOLDERS = ("imagesTr", "imagesTs")  # folders whose parent's dataset.json numbers their channels
CHANNEL_OF_KIND = {"png": "PNG", "volume": "CT"}  # files named without a channel number (DICOM: CT too)
VOLUME_ENDING = ".nii.gz"


@dataclass(frozen=True)
class DicomSeries:
    """The slice files of a DICOM series that make a regular volume, in order along the slice normal."""

    uid: str
    files: tuple[Path, ...]
    geometry: ImageGeometry
    has_frame_of_reference: bool  # which a DICOM SEG must reference: without one, the series gets none


@dataclass(frozen=True)
class InputCase:
    name: str
    files: dict[int, Path]  # the model's raw channel index -> its file: a slice, or a volume
    label_ending: str  # the output label map's ending: NIfTI for NIfTI and volume input, PNG otherwise
    series: DicomSeries | None = None  # a DICOM series: the Hounsfield units, slice by slice
    hounsfield: Path | None = None  # a CT file a model without a CT channel reads only to make its PNG channel
    is_volume: bool = False  # predicted slice by slice and written as one 3D label map

    def input_files(self) -> list[Path]:
        """Every file the case is read from."""
        return [*self.files.values(), *(self.series.files if self.series else ()),
                *([self.hounsfield] if self.hounsfield else [])]


@dataclass
class InputListing:
    cases: dict[str, InputCase]
    problems: dict[str, str]  # case (or file) -> why it cannot be predicted
    ignored: list[str]  # files of no supported kind
    warnings: list[str] = field(default_factory=list)  # predicted, but not as the user may expect


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
    hounsfield: Path | None = None  # a CT file of a model without a CT channel


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
    if is_volume_file(name):
        return "volume"
    if name.endswith(".png"):
        return "png"
    if is_dicom_file(path):
        return "dicom"
    return None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*VOLUME_READERS, ".png", *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _model_channel(name: str, model_channels: dict[int, str]) -> int | None:
    """The model's channel called `name` (in any case), None when the model has none."""
    return next((index for index, model_name in model_channels.items() if model_name.upper() == name.upper()), None)


def _case_and_channel(path: Path, kind: str, numbering: ChannelNumbering,
                      model_channels: dict[int, str]) -> tuple[str, str | None, bool] | str:
    """(case, the channel's name, named with a channel number) of a file, or why they cannot be told.
    The name is None for a 2D NIfTI file read as the only channel of a single-channel model."""
    numbered = (CHANNEL_NUMBER.match(path.name.removesuffix(numbering.file_ending))
                if path.name.endswith(numbering.file_ending) else None)
    if numbered:
        number = int(numbered["channel"])
        if number not in numbering.channel_names:
            return f"{number} is not a channel number of {numbering.describe()}"
        return numbered["case"], numbering.channel_names[number], True
    if kind == "nifti" and image_slices(path) > 1:
        kind = "volume"
    if kind in CHANNEL_OF_KIND:
        return _stem(path), CHANNEL_OF_KIND[kind], False
    if numbering.dataset_json is None and len(model_channels) == 1:
        return _stem(path), None, False
    return "a 2D NIfTI file without a channel number"


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


@dataclass
class _Found:
    """What the files of an input folder make, while they are read."""

    model_channels: dict[int, str]
    cases: dict[str, _CaseFiles] = field(default_factory=dict)
    unclear: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, path: Path, case: str, channel_name: str | None, numbered: bool) -> None:
        files = self.cases.setdefault(case, _CaseFiles())
        if numbered:
            files.numbered.append(path.name)
        channel = (next(iter(self.model_channels)) if channel_name is None
                   else _model_channel(channel_name, self.model_channels))
        if channel is None:  # a channel the model does not have: read only to make one from its HU
            if channel_name == "CT":
                files.hounsfield = path
            return
        if channel in files.channels:
            self.unclear.append(f"{path.name}: a second file for channel {self.model_channels[channel]} of case "
                                f"{case} (with {files.channels[channel].name})")
            return
        files.channels[channel] = path


def find_input_cases(folder: Path, model: DatasetJson, needed_channels: set[int],
                     made_from_hounsfield: set[int] = frozenset()) -> InputListing:
    """The cases of `folder`, each with the files of the model's channels in `needed_channels` (those in
    `made_from_hounsfield` may instead be made from a CT file or series of the case).

    An error listing every file whose case or channel cannot be told (see the module's docstring).
    """
    if not folder.is_dir():
        raise SDMCError(f"{folder}: input folder not found")
    numbering = channel_numbering(folder, model)
    found = _Found(model.channel_names)
    ignored, dicom_files, png_stems = [], [], set()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        kind = _kind(path)
        if kind is None:
            ignored.append(path.name)
        elif kind == "dicom":
            dicom_files.append(path)  # a slice of a TEKNOFEST pair or of a series: told once all are known
        else:
            if kind == "png":
                png_stems.add(_stem(path))
            try:
                interpreted = _case_and_channel(path, kind, numbering, model.channel_names)
            except SDMCError as error:  # a volume file whose header cannot be read
                found.problems[path.name] = str(error)
                continue
            if isinstance(interpreted, str):
                found.unclear.append(f"{path.name}: {interpreted}")
            else:
                found.add(path, *interpreted)
    series = _add_dicom_files(dicom_files, png_stems, found)
    cases = {}
    for case, files in found.cases.items():
        # Channels are made from the HU of a DICOM or a CT volume; never from an nnU-Net-numbered file, whose
        # numbers may be another dataset's (a PNG-only dataset's channel 0 is no CT)
        has_hounsfield = not files.numbered and (files.hounsfield is not None or _model_channel(
            "CT", model.channel_names) in files.channels)
        missing = needed_channels - set(files.channels) - (made_from_hounsfield if has_hounsfield else set())
        if missing:
            if files.numbered:  # its channel numbers may be another dataset's: never a case of its own
                found.unclear.append(f"{', '.join(files.numbered)}: {_lacking(case, missing, model.channel_names)}")
            else:
                found.problems[case] = f"{_lacking(case, missing, model.channel_names)} in {folder}"
            continue
        used = {channel: path for channel, path in sorted(files.channels.items()) if channel in needed_channels}
        ct_file = files.hounsfield or files.channels.get(_model_channel("CT", model.channel_names))
        hounsfield = ct_file if needed_channels - set(used) else None
        read = [*used.values(), *([hounsfield] if hounsfield else [])]
        try:
            volume = any(is_volume_file(path) and image_slices(path) > 1 for path in read)
        except SDMCError as error:
            found.problems[case] = str(error)
            continue
        ending = VOLUME_ENDING if volume or any(is_volume_file(path) for path in read) else ".png"
        cases[case] = InputCase(case, used, ending, hounsfield=hounsfield, is_volume=volume)
    for uid, dicom_series in series.items():
        cases[uid] = _series_case(uid, dicom_series, model, needed_channels, made_from_hounsfield, found)
    if found.unclear:
        raise _unclear_files_error(folder, found.unclear, numbering)
    cases = {name: case for name, case in cases.items() if case is not None}
    return InputListing(dict(sorted(cases.items())), found.problems, ignored, found.warnings)


def _add_dicom_files(paths: list[Path], paired_stems: set[str], found: _Found) -> dict[str, DicomSeries]:
    """Add the DICOM slices of TEKNOFEST pairs and of series that are no volume to `found`; return the series
    that are volumes."""
    volumes, headers = {}, []
    for path in paths:
        if _stem(path) in paired_stems:
            found.add(path, _stem(path), "CT", False)
            continue
        try:
            headers.append(read_dicom_header(path))
        except SDMCError as error:
            found.problems[path.name] = str(error)
    for uid, members in group_series(headers).items():
        if len(members) > 1 and (modalities := {header.modality for header in members} - {"CT"}):
            found.problems[uid] = (f"series {uid} ({len(members)} files in {members[0].path.parent}, e.g. "
                                   f"{members[0].path.name}): modality {listed(sorted(map(str, modalities)))}, "
                                   f"expected CT (Hounsfield units)")
            continue
        check = check_series(members) if len(members) > 1 else None
        if check is not None and check.geometry is not None:
            with_reference = all(header.frame_of_reference_uid for header in members)
            if not with_reference:
                found.warnings.append(f"series {uid} ({members[0].path.parent}): its slices have no "
                                      f"FrameOfReferenceUID, which a DICOM SEG must reference: it gets a NIfTI label "
                                      f"map and lesion volumes, no DICOM SEG")
            volumes[uid] = DicomSeries(uid, tuple(header.path for header in members), check.geometry, with_reference)
            continue
        if check is not None:
            found.warnings.append(f"series {uid} ({len(members)} files in {members[0].path.parent}) is not a "
                                  f"regular volume: {check.not_a_volume}; its slices are predicted one by one (2D "
                                  f"label maps, no volume, DICOM SEG or lesion volumes)")
        for header in members:
            found.add(header.path, _stem(header.path), "CT", False)
    return volumes


def _series_case(uid: str, series: DicomSeries, model: DatasetJson, needed_channels: set[int],
                 made_from_hounsfield: set[int], found: _Found) -> InputCase | None:
    """The case of a DICOM series that is a volume (its CT channel, and channels made from it)."""
    ct = _model_channel("CT", model.channel_names)
    if missing := needed_channels - {ct} - made_from_hounsfield:
        found.problems[uid] = f"{_lacking(f'series {uid}', missing, model.channel_names)} (a DICOM series is CT)"
        return None
    if problem := case_name_problem(uid, VOLUME_ENDING):
        found.problems[uid] = f"series in {series.files[0].parent}: {problem}"
        return None
    return InputCase(uid, {}, VOLUME_ENDING, series=series, is_volume=True)


def read_case_channels(case: InputCase, channel_names: dict[int, str],
                       png_windows: dict[int, tuple[float, float]]) -> tuple[np.ndarray, ImageGeometry | None]:
    """(raw channels, slices, H, W) float32, zeros in the channels the model does not read, and where the
    pixels lie: the geometry of the series, or of its first channel file that records one (None for PNG
    alone). Channels in `png_windows` that the case has no file for are made from its Hounsfield units."""
    arrays, geometry = {}, None
    for channel, path in sorted(case.files.items()):
        arrays[channel], file_geometry = _read_image(path, case.is_volume)
        geometry = geometry or file_geometry
    ct = _model_channel("CT", channel_names)
    hounsfield = arrays.get(ct)
    if case.series is not None:
        hounsfield, geometry = _read_series(case.series), case.series.geometry
    elif case.hounsfield is not None:
        hounsfield, file_geometry = _read_image(case.hounsfield, case.is_volume)
        geometry = geometry or file_geometry
    if ct is not None and hounsfield is not None:
        arrays[ct] = hounsfield
    for channel, window in png_windows.items():
        if channel not in arrays and hounsfield is not None:
            arrays[channel] = png_from_hounsfield(hounsfield, window)
    if not arrays:  # find_input_cases lists no such case
        raise SDMCError(f"case {case.name}: none of its files holds a channel the model reads")
    shapes = {channel_names[channel]: array.shape for channel, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise SDMCError(f"case {case.name}: its channels differ in shape: {shapes}")
    raw_channels = np.zeros((len(channel_names), *next(iter(shapes.values()))), dtype=np.float32)
    for channel, array in arrays.items():
        raw_channels[channel] = array
    return raw_channels, geometry


def _read_image(path: Path, volume: bool) -> tuple[np.ndarray, ImageGeometry | None]:
    """A slice as one (1, H, W), a volume file as (slices, H, W), with its geometry."""
    if volume or is_volume_file(path) and not is_nifti(path):
        return read_volume_with_geometry(path)
    array, geometry = read_slice_with_geometry(path)
    return array[None], geometry


def _read_series(series: DicomSeries) -> np.ndarray:
    """The Hounsfield units of a series' slices, (slices, H, W)."""
    return np.stack([read_dicom_slice(path).hounsfield for path in series.files])
