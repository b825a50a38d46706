"""`sdmc_predict`: segment a folder of CT slices, volumes or DICOM series with a trained model.

    sdmc_predict -i SLICES -o OUT -d 2021 -tr SDMCFinetunedTrainer -f 0 1 2 3 4
    sdmc_predict -i SLICES -o OUT -m path/to/SDMCFinetunedTrainer__sdmcPlans__2d --overlays
    sdmc_predict -i DICOM_SERIES -o OUT -d 2021 -tr SDMCFinetunedTrainer -num_samples 5
    sdmc_predict ... -num_parts 4 -part_id 0   # one of 4 processes (or machines) sharing the cases

A DICOM series or a 3D volume gives a 3D NIfTI label map with the input's geometry and
`{case}_volumes.json` (lesion volumes in mL); a DICOM series also a DICOM SEG, `{case}_seg.dcm`.
`volumes.csv` lists the volumes of every case; `prediction_info.json` says which model and options
made the folder and maps each case's input files to its outputs.
"""

import argparse
import hashlib
import json
import logging
import zipfile
from pathlib import Path

import torch

from sdmcunet.inference.input_files import InputListing, find_input_cases
from sdmcunet.inference.lesion_volumes import VOLUMES_SUFFIX, write_volume_table
from sdmcunet.inference.model_loading import LoadedModel, load_model
from sdmcunet.inference.predictor import PredictionOptions, PredictionRun, output_paths, png_windows, predict_folder
from sdmcunet.results.layout import FINAL_CHECKPOINT, PLANS_FILE
from sdmcunet.results.trained_model import TrainedModel
from sdmcunet.utils.cli import configure_logging, console_entry, non_negative_int, positive_int, random_seed
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.listing import listed
from sdmcunet.utils.output_record import (
    RECORD_FILES, OutputRecord, claim_output_folder, read_record, record_lock, write_record,
)

log = logging.getLogger("sdmcunet.inference")
COMMAND = "sdmc_predict"
RUN_RECORD = RECORD_FILES[COMMAND]  # which model and options made the folder's outputs, and what the last run did


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdmc_predict", description=__doc__.splitlines()[0])
    parser.add_argument("-i", dest="input", type=Path, required=True,
                        help="folder of slices: DICOM (any name; a series of slices is one volume) and/or PNG "
                        "sharing their stem (the case), NIfTI/NRRD/MHA slices or CT volumes, or a raw dataset's "
                        "imagesTr/imagesTs ({case}_{channel:04d}{ending}, channels as its dataset.json names them)")
    parser.add_argument("-o", dest="output", type=Path, required=True, help="output folder")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("-d", dest="dataset_id", type=non_negative_int,
                       help="dataset id (with -tr): the model in SDMC_results")
    model.add_argument("-m", dest="model_folder", type=Path, help="a model folder (e.g. copied elsewhere)")
    parser.add_argument("-tr", dest="trainer", help="trainer name (required with -d)")
    parser.add_argument("-p", dest="plans", default="sdmcPlans", help="plans name (default sdmcPlans)")
    parser.add_argument("-c", dest="configuration", default="2d", help="configuration (default 2d)")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="folds to average (default: every fold with a checkpoint); 'all' for fold_all")
    parser.add_argument("-chk", dest="checkpoint", default=FINAL_CHECKPOINT, help="checkpoint file name")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also write {case}.npz: class probabilities (and uncertainty with -num_samples > 1)")
    parser.add_argument("--overlays", action="store_true", help="also write overlays/{case}.png: lesions over the CT")
    parser.add_argument("--tta", action="store_true", help="average with the left-right mirrored slice")
    parser.add_argument("-num_samples", type=positive_int, default=1,
                        help="SDMC: noise draws averaged per fold; their spread is the uncertainty (default 1)")
    parser.add_argument("-seed", type=random_seed, default=0, help="SDMC: seed of the noise draws (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="predict again cases whose outputs exist; in a folder made by another model or with "
                        "other options, delete its outputs first")
    parser.add_argument("-np", dest="num_processes", type=non_negative_int, default=2,
                        help="worker processes reading and writing slices (default 2; 0 = none)")
    parser.add_argument("-num_parts", type=positive_int, default=1,
                        help="split the input's cases into this many parts, one per process or machine (default 1)")
    parser.add_argument("-part_id", type=non_negative_int, default=0,
                        help="which part this process predicts: 0 .. num_parts - 1 (default 0)")
    parser.add_argument("-device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.dataset_id is not None and not args.trainer:
        parser.error("-d needs -tr TRAINER")
    if args.part_id >= args.num_parts:
        parser.error(f"-part_id {args.part_id} is out of range: with -num_parts {args.num_parts} it is 0 .. "
                     f"{args.num_parts - 1}")
    return args


def _check_folders(input_folder: Path, output_folder: Path) -> None:
    if output_folder.resolve() == input_folder.resolve():
        raise SDMCError(f"{output_folder}: the output folder must differ from the input folder "
                        f"(label maps would replace input PNGs)")


def checkpoint_fingerprint(path: Path) -> str:
    """A cheap identity of a checkpoint's content: a hash of its zip directory (member names, CRC-32s and
    sizes), read without reading the weights. Unlike the file's time it stays the same when the same state
    is saved again (`sdmc_train --c` of a finished fold rewrites checkpoint_final)."""
    try:
        with zipfile.ZipFile(path) as archive:  # torch.save's format; members lie below a folder named after the file
            members = sorted((info.filename.partition("/")[2], info.CRC, info.file_size) for info in archive.infolist())
    except (OSError, zipfile.BadZipFile) as error:
        raise SDMCError(f"{path}: cannot be read as a checkpoint ({error})") from None
    return hashlib.sha256(json.dumps(members).encode()).hexdigest()


def _made_by(model: LoadedModel, checkpoint_name: str, options: PredictionOptions) -> dict:
    """What decides the label maps: the model, its weights and the options that change predictions."""
    return {
        "model_folder": str(model.folder.resolve()), "trainer": model.trainer_name,
        "plans": model.plans.plans_name, "configuration": model.configuration.name,
        "folds": [fold.fold for fold in model.folds], "checkpoint": checkpoint_name,
        "checkpoint_fingerprints": {
            fold.fold: checkpoint_fingerprint(model.model.fold(fold.fold).folder / checkpoint_name)
            for fold in model.folds},
        "tta": options.tta, "num_samples": options.n_samples, "seed": options.seed,
    }


def part_of(listing: InputListing, num_parts: int, part_id: int) -> InputListing:
    """The cases (and unpredictable inputs) of one part of a split job: every `num_parts`-th of them by
    name, so that the parts cover each case once, whichever machine runs which part."""
    names = sorted({*listing.cases, *listing.problems})[part_id::num_parts]
    return InputListing({name: listing.cases[name] for name in names if name in listing.cases},
                        {name: listing.problems[name] for name in names if name in listing.problems},
                        listing.ignored, listing.warnings)


def _run_details(output: Path, record: OutputRecord, listing: InputListing, run: PredictionRun,
                 options: PredictionOptions) -> dict:
    """The record's details after this run, merged with what earlier runs (or other parts) recorded."""
    previous = read_record(output, record)
    cases = previous.get("cases", {}) if isinstance(previous.get("cases"), dict) else {}
    for name in [*run.predicted, *run.skipped]:
        case = listing.cases[name]
        cases[name] = {"inputs": [str(path.resolve()) for path in case.input_files()],
                       "outputs": [str(path.relative_to(output)) for path in output_paths(output, case, options)]}
    problems = previous.get("problems", {}) if isinstance(previous.get("problems"), dict) else {}
    problems = {name: reason for name, reason in problems.items() if name not in cases} | run.problems
    warnings = sorted({*previous.get("warnings", []), *listing.warnings})
    return {"save_probabilities": options.save_probabilities, "overlays": options.overlays,
            "predicted": len(run.predicted), "skipped_existing": len(run.skipped),
            "problems": problems, "warnings": warnings, "cases": dict(sorted(cases.items()))}


def _unpredicted_message(run: PredictionRun) -> str:
    reasons = listed((f"{name}: {reason}" for name, reason in sorted(run.problems.items())), separator="; ")
    if not run.predicted and not run.skipped:
        return f"none of the {len(run.problems)} input(s) could be predicted: {reasons}"
    return f"{len(run.problems)} input(s) could not be predicted (the rest were): {reasons}"


@console_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SDMCError("-device cuda was asked for but no CUDA GPU is available; use -device cpu")
    _check_folders(args.input, args.output)
    folder = args.model_folder or TrainedModel.find(args.dataset_id, args.trainer, args.plans, args.configuration).folder
    if not (folder / PLANS_FILE).is_file():
        raise SDMCError(f"{folder}: not a model folder (no {PLANS_FILE})")
    model = load_model(folder, args.folds, args.checkpoint, torch.device(args.device), args.trainer)
    needed = {channel.source_channel for channel in model.configuration.input_channels}
    listing = find_input_cases(args.input, model.dataset, needed, set(png_windows(model.configuration)))
    if listing.ignored:
        log.info("ignored %d file(s) of no supported kind: %s", len(listing.ignored), ", ".join(listing.ignored[:10]))
    if not listing.cases and not listing.problems:
        raise SDMCError(f"{args.input}: no DICOM, PNG, NIfTI, NRRD or MHA images found")
    for warning in listing.warnings:
        log.warning("%s", warning)
    listing = part_of(listing, args.num_parts, args.part_id)
    options = PredictionOptions(args.save_probabilities, args.overlays, args.tta, args.num_samples, args.seed,
                                args.overwrite)
    record = OutputRecord(COMMAND, _made_by(model, args.checkpoint, options))
    additive = {"save_probabilities": options.save_probabilities, "overlays": options.overlays}
    with record_lock(args.output, record):
        claim_output_folder(args.output, record, args.overwrite, **additive)
    run = predict_folder(model, listing, args.output, options, args.num_processes)
    with record_lock(args.output, record):
        details = _run_details(args.output, record, listing, run, options)
        write_record(args.output, record, **details)
        table = write_volume_table(args.output, [args.output / output for case in details["cases"].values()
                                                 for output in case["outputs"] if output.endswith(VOLUMES_SUFFIX)])
    part = f" (part {args.part_id} of 0 .. {args.num_parts - 1})" if args.num_parts > 1 else ""
    print(f"{len(run.predicted)} case(s) predicted, {len(run.skipped)} already done{part}, into {args.output}"
          + (f"; lesion volumes in {table}" if table else ""))
    if run.problems:
        raise SDMCError(_unpredicted_message(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
