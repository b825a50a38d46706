"""`sdmc_predict`: segment a folder of CT slices (DICOM, PNG or NIfTI) with a trained model.

    sdmc_predict -i SLICES -o OUT -d 2021 -tr SDMCFinetunedTrainer -f 0 1 2 3 4
    sdmc_predict -i SLICES -o OUT -m path/to/SDMCFinetunedTrainer__sdmcPlans__2d --overlays
"""

import argparse
import hashlib
import json
import logging
import zipfile
from pathlib import Path

import torch

from sdmcunet.inference.input_files import find_input_cases
from sdmcunet.inference.model_loading import LoadedModel, load_model
from sdmcunet.inference.predictor import PredictionOptions, PredictionRun, predict_folder
from sdmcunet.results.layout import FINAL_CHECKPOINT, PLANS_FILE
from sdmcunet.results.trained_model import TrainedModel
from sdmcunet.utils.cli import configure_logging, console_entry, non_negative_int, positive_int, random_seed
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.listing import listed
from sdmcunet.utils.output_record import RECORD_FILES, OutputRecord, claim_output_folder, write_record

log = logging.getLogger("sdmcunet.inference")
COMMAND = "sdmc_predict"
RUN_RECORD = RECORD_FILES[COMMAND]  # which model and options made the folder's outputs, and what the last run did


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdmc_predict", description=__doc__.splitlines()[0])
    parser.add_argument("-i", dest="input", type=Path, required=True,
                        help="folder of slices: DICOM (.dcm, .dicom) and/or PNG sharing their stem (the case), NIfTI, "
                        "or a raw dataset's imagesTr/imagesTs ({case}_{channel:04d}{ending}, channels as its "
                        "dataset.json names them)")
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
    parser.add_argument("-device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.dataset_id is not None and not args.trainer:
        parser.error("-d needs -tr TRAINER")
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
    listing = find_input_cases(args.input, model.dataset, needed)
    if listing.ignored:
        log.info("ignored %d file(s) of no supported kind: %s", len(listing.ignored), ", ".join(listing.ignored[:10]))
    if not listing.cases and not listing.problems:
        raise SDMCError(f"{args.input}: no DICOM, PNG or NIfTI slices found")
    options = PredictionOptions(args.save_probabilities, args.overlays, args.tta, args.num_samples, args.seed,
                                args.overwrite)
    record = OutputRecord(COMMAND, _made_by(model, args.checkpoint, options))
    additive = {"save_probabilities": options.save_probabilities, "overlays": options.overlays}
    claim_output_folder(args.output, record, args.overwrite, **additive)
    run = predict_folder(model, listing, args.output, options, args.num_processes)
    write_record(args.output, record, **additive, predicted=len(run.predicted), skipped_existing=len(run.skipped),
                 problems=run.problems)
    print(f"{len(run.predicted)} slice(s) predicted, {len(run.skipped)} already done, into {args.output}")
    if run.problems:
        raise SDMCError(_unpredicted_message(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
