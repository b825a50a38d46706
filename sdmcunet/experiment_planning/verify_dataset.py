"""`sdmc_verify_dataset -d ID`: check a raw dataset against the contract, listing every problem.

Checks: `dataset.json` is valid; every file name follows the nnU-Net v2 pattern; every case has
all its channels and its label; numTraining matches; per case, every file is readable (a NIfTI
with NaN or infinite values and a colour PNG label map are not), channels and label agree in
shape and spacing, and label values are among `labels`.
"""

import argparse
import logging
import re
from functools import partial
from pathlib import Path

import numpy as np

from sdmcunet import paths
from sdmcunet.imageio import read_label_slice
from sdmcunet.raw_dataset import (
    DatasetJson, find_dataset, image_file_name, label_file_name, load_dataset_json, read_raw_image,
)
from sdmcunet.utils.cli import add_num_processes_argument, configure_logging, console_entry, non_negative_int
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.parallel import parallel_map

log = logging.getLogger("sdmcunet.verify")
SPACING_TOLERANCE = 1e-3


def verify_dataset(folder: Path, num_processes: int = 1, read_images: bool = True) -> list[str]:
    """Every problem found in the raw dataset `folder` (an empty list when it is valid).

    Without `read_images` only the file sets are checked (fast: nothing is read).
    """
    dataset = load_dataset_json(folder)
    problems, cases = _check_file_names(folder, dataset)
    if not read_images:
        return problems
    check = partial(_check_case, folder=folder, dataset=dataset)
    for case_problems in parallel_map(check, cases, num_processes, "verifying cases"):
        problems.extend(case_problems)
    return problems


def _check_file_names(folder: Path, dataset: DatasetJson) -> tuple[list[str], list[str]]:
    """Problems with the file sets, and the cases complete enough to be read."""
    ending = re.escape(dataset.file_ending)
    image_pattern = re.compile(rf"^(.+)_(\d{{4}}){ending}$")
    label_pattern = re.compile(rf"^(.+){ending}$")
    problems: list[str] = []
    channels_by_case: dict[str, set[int]] = {}
    for path in _files(folder / "imagesTr", problems):
        match = image_pattern.match(path.name)
        if match:
            channels_by_case.setdefault(match[1], set()).add(int(match[2]))
        else:
            problems.append(f"{path}: name does not follow {{case}}_{{channel:04d}}{dataset.file_ending}")
    labelled = set()
    for path in _files(folder / "labelsTr", problems):
        match = label_pattern.match(path.name)
        if match:
            labelled.add(match[1])
        else:
            problems.append(f"{path}: name does not follow {{case}}{dataset.file_ending}")
    expected_channels = set(dataset.channel_names)
    for case, channels in sorted(channels_by_case.items()):
        if missing := sorted(expected_channels - channels):
            problems.append(f"case {case}: channel file(s) {missing} missing in imagesTr")
        if extra := sorted(channels - expected_channels):
            problems.append(f"case {case}: channel file(s) {extra} not declared in channel_names")
    for case in sorted(set(channels_by_case) - labelled):
        problems.append(f"case {case}: label file {label_file_name(case, dataset.file_ending)} missing in labelsTr")
    for case in sorted(labelled - set(channels_by_case)):
        problems.append(f"{folder / 'labelsTr' / label_file_name(case, dataset.file_ending)}: label without images")
    if len(channels_by_case) != dataset.n_training:
        problems.append(f"dataset.json says numTraining={dataset.n_training} but imagesTr holds {len(channels_by_case)} cases")
    complete = sorted(case for case, channels in channels_by_case.items()
                      if expected_channels <= channels and case in labelled)
    return problems, complete


def _files(folder: Path, problems: list[str]) -> list[Path]:
    if not folder.is_dir():
        problems.append(f"{folder}: folder missing")
        return []
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))


def _check_case(case: str, folder: Path, dataset: DatasetJson) -> list[str]:
    problems = []
    images = [folder / "imagesTr" / image_file_name(case, channel, dataset.file_ending) for channel in dataset.channel_names]
    label_path = folder / "labelsTr" / label_file_name(case, dataset.file_ending)
    try:
        arrays = {path: read_raw_image(path) for path in images}
        label_map, label_spacing = read_label_slice(label_path)
    except SDMCError as error:
        return [str(error)]
    for path in images:
        array, spacing = arrays[path]
        if array.shape != label_map.shape:
            problems.append(f"{path}: shape {array.shape} differs from its label's {label_map.shape}")
        elif spacing is not None and not np.allclose(spacing, label_spacing, atol=SPACING_TOLERANCE):
            problems.append(f"{path}: spacing {spacing} differs from its label's {label_spacing}")
    unexpected = sorted(set(np.unique(label_map).tolist()) - set(dataset.labels.values()))
    if unexpected:
        problems.append(f"{label_path}: label values {unexpected} are not in dataset.json labels")
    return problems


def verify_or_raise(folder: Path, num_processes: int = 1, read_images: bool = True) -> None:
    """Raise an SDMCError listing every problem of the dataset, if it has any."""
    problems = verify_dataset(folder, num_processes, read_images)
    if problems:
        listing = "\n  ".join(problems)
        raise SDMCError(f"{folder} failed verification ({len(problems)} problem(s)); fix these and run again:\n  {listing}")


@console_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdmc_verify_dataset", description=__doc__.splitlines()[0])
    parser.add_argument("-d", dest="dataset_id", type=non_negative_int, required=True, help="dataset id, e.g. 2021")
    parser.add_argument("--raw", type=Path, default=None, help="raw data folder (default $SDMC_raw or ./raw_data)")
    add_num_processes_argument(parser)
    args = parser.parse_args(argv)
    configure_logging()
    folder = find_dataset(args.raw or paths.raw_root(), args.dataset_id)
    verify_or_raise(folder, max(1, args.num_processes))
    print(f"{folder}: verified, no problems found")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
