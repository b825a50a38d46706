"""`sdmc_ensemble`: average the saved probabilities of several prediction folders, case by case.

    sdmc_ensemble -i PRED_MODEL_1 PRED_MODEL_2 -o OUTPUT [--save_probabilities]

Every input folder holds, per case, a label map and `{case}.npz` (key `probabilities`, float16,
(classes, rows, columns)), as written by `sdmc_predict --save_probabilities` or `sdmc_train --npz`.
The output label map is the argmax of the mean probabilities, in the format and with the geometry
(spacing, origin, direction) of the first folder's label map of that case. `ensemble_info.json`
records the input folders (and what made them); a folder made from other inputs is refused
unless `--overwrite` is given.
"""

import argparse
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdmcunet.imageio import write_label_map
from sdmcunet.imageio.label_map_folders import find_label_map, label_map_ending, read_label_map_with_geometry
from sdmcunet.imageio.probabilities import load_probabilities, save_probabilities
from sdmcunet.utils.cli import add_num_processes_argument, configure_logging, console_entry
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.listing import listed
from sdmcunet.utils.output_record import OutputRecord, claim_output_folder, made_by_of, write_record
from sdmcunet.utils.parallel import parallel_map

log = logging.getLogger("sdmcunet.ensembling")
COMMAND = "sdmc_ensemble"


@dataclass(frozen=True)
class EnsembleJob:
    case: str
    probabilities: tuple[Path, ...]  # the case's npz in every input folder
    label_map: Path  # the first folder's label map of the case: format and geometry of the output
    output: Path  # the ensemble's label map


def probability_file(folder: Path, case: str) -> Path:
    return folder / f"{case}.npz"


def cases_with_probabilities(folder: Path) -> set[str]:
    if not folder.is_dir():
        raise SDMCError(f"{folder}: folder not found")
    return {path.stem for path in folder.glob("*.npz") if not path.name.startswith(".")}


def missing_probabilities(folder: Path, cases: list[str]) -> list[str]:
    return [case for case in cases if not probability_file(folder, case).is_file()]


def common_cases(folders: list[Path]) -> list[str]:
    """The cases with probabilities in every folder; an error listing the cases some folder lacks."""
    found = {folder: cases_with_probabilities(folder) for folder in folders}
    every_case = set().union(*found.values())
    if not every_case:
        raise SDMCError(f"no probabilities ({{case}}.npz) in {listed(map(str, folders))}; predict with "
                        "--save_probabilities (sdmc_predict) or --npz (sdmc_train)")
    lacking = {folder: sorted(every_case - cases) for folder, cases in found.items() if every_case - cases}
    if lacking:
        raise SDMCError("the input folders do not hold the same cases:\n  " + "\n  ".join(
            f"{folder} lacks {len(cases)}: {listed(cases)}" for folder, cases in lacking.items()))
    return sorted(every_case)


def ensemble_jobs(folders: list[Path], output: Path, cases: list[str]) -> list[EnsembleJob]:
    """One job per case; an error naming every missing probability or label-map file."""
    problems = [f"{folder} lacks probabilities of {len(missing)} cases: {listed(missing)}"
                for folder in folders if (missing := missing_probabilities(folder, cases))]
    label_maps = {case: find_label_map(folders[0], case) for case in cases}
    if without := [case for case, path in label_maps.items() if path is None]:
        problems.append(f"{folders[0]} lacks the label map (.png, .nii.gz, .nii) of {len(without)} cases: "
                        f"{listed(without)}")
    if problems:
        raise SDMCError("cannot ensemble:\n  " + "\n  ".join(problems))
    return [EnsembleJob(case, tuple(probability_file(folder, case) for folder in folders), label_maps[case],
                        output / f"{case}{label_map_ending(label_maps[case].name)}")
            for case in cases]


def mean_probabilities(paths: tuple[Path, ...]) -> np.ndarray:
    """The mean, in float32, of the probabilities in `paths`; an error if their shapes differ."""
    members = [load_probabilities(path) for path in paths]
    if len({member.shape for member in members}) > 1:
        shapes = ", ".join(f"{path}: {member.shape}" for path, member in zip(paths, members))
        raise SDMCError(f"probabilities of different shapes cannot be averaged ({shapes})")
    return np.mean([member.astype(np.float32) for member in members], axis=0)


def ensemble_case(job: EnsembleJob, keep_probabilities: bool) -> Path:
    probabilities = mean_probabilities(job.probabilities)
    template, geometry = read_label_map_with_geometry(job.label_map)
    if probabilities.shape[1:] != template.shape:
        raise SDMCError(f"{job.probabilities[0]}: probabilities of shape {probabilities.shape} do not fit the label "
                        f"map {job.label_map} of shape {template.shape}")
    write_label_map(probabilities.argmax(0).astype(np.uint8), job.output, geometry)
    if keep_probabilities:
        save_probabilities(probability_file(job.output.parent, job.case), probabilities)
    return job.output


def run_ensemble(jobs: list[EnsembleJob], num_processes: int, keep_probabilities: bool = False) -> list[Path]:
    """Write every job's label map (and probabilities on request); returns the label maps written."""
    work = functools.partial(ensemble_case, keep_probabilities=keep_probabilities)
    return list(parallel_map(work, jobs, num_processes, "ensembling"))


def ensemble_folders(folders: list[Path], output: Path, num_processes: int, keep_probabilities: bool = False,
                     overwrite: bool = False) -> list[Path]:
    """Ensemble every common case of `folders` into `output`, which must not hold another ensemble's outputs
    (unless `overwrite`: they are deleted)."""
    if len({folder.resolve() for folder in folders}) < 2:
        raise SDMCError("an ensemble needs at least two different input folders")
    if output.resolve() in {folder.resolve() for folder in folders}:
        raise SDMCError(f"{output}: the output folder must not be one of the input folders")
    jobs = ensemble_jobs(folders, output, common_cases(folders))
    record = OutputRecord(COMMAND, {"inputs": [str(folder.resolve()) for folder in folders],
                                    "inputs_made_by": [made_by_of(folder) for folder in folders]})
    claim_output_folder(output, record, overwrite, save_probabilities=keep_probabilities)
    written = run_ensemble(jobs, num_processes, keep_probabilities)
    write_record(output, record, save_probabilities=keep_probabilities, cases=len(written))
    log.info("ensembled %d cases of %d folders into %s", len(written), len(folders), output)
    return written


@console_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdmc_ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("-i", dest="inputs", type=Path, nargs="+", required=True,
                        help="prediction folders with {case}.npz probabilities and label maps")
    parser.add_argument("-o", dest="output", type=Path, required=True, help="output folder")
    add_num_processes_argument(parser)
    parser.add_argument("--save_probabilities", action="store_true", help="also write the mean probabilities")
    parser.add_argument("--overwrite", action="store_true",
                        help="in a folder made from other inputs, delete its outputs first (else it is refused)")
    args = parser.parse_args(argv)
    configure_logging()
    written = ensemble_folders(args.inputs, args.output, args.num_processes, args.save_probabilities, args.overwrite)
    print(f"wrote {len(written)} label maps to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
