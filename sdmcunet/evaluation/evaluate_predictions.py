"""`sdmc_evaluate`: score predicted label maps against references with the Stroke2021 protocol.

    sdmc_evaluate -ref REF_DIR -pred PRED_DIR [-o summary.json]    # any two folders, same file names
    sdmc_evaluate -d 2021 -tr UNetTrainer -f 0                      # a fold's validation predictions
    sdmc_evaluate -d 2021 -tr UNetTrainer                           # all folds together (cross-validation)

Label maps are PNG or NIfTI. The summary.json layout is docs/design.md §7 (see evaluation/metrics.py),
plus `left_out`: the cases skipped by --ignore_missing, and `patients`: 95% bootstrap intervals over
patients (evaluation/statistics.py) when the references are a raw dataset's labelsTr/labelsTs or a
model's dataset with a `case_info.json`, else null intervals and the reason.
"""

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from sdmcunet.evaluation.metrics import CaseResult, evaluate_case, summarise, write_summary
from sdmcunet.evaluation.statistics import patient_block, patients_of_references
from sdmcunet import paths
from sdmcunet.raw_dataset import find_dataset
from sdmcunet.results.layout import SUMMARY_FILE
from sdmcunet.results.trained_model import CasePair, TrainedModel
from sdmcunet.imageio.label_map_folders import case_name, label_map_files, read_label_map
from sdmcunet.utils.cli import add_num_processes_argument, configure_logging, console_entry, non_negative_int
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.listing import listed
from sdmcunet.utils.parallel import parallel_map

log = logging.getLogger("sdmcunet.evaluation")


def folder_pairs(reference_folder: Path, prediction_folder: Path) -> list[CasePair]:
    """A pair for every label-map file name in either folder (the other side may be missing)."""
    names = sorted(label_map_files(reference_folder).keys() | label_map_files(prediction_folder).keys())
    return [CasePair(case_name(name), reference_folder / name, prediction_folder / name) for name in names]


def missing_files(pairs: list[CasePair]) -> dict[Path, list[str]]:
    """The files that do not exist, as folder -> file names."""
    missing: dict[Path, list[str]] = {}
    for pair in pairs:
        for path in (pair.reference, pair.prediction):
            if not path.is_file():
                missing.setdefault(path.parent, []).append(path.name)
    return missing


def complete_pairs(pairs: list[CasePair], ignore_missing: bool, hint: str = "") -> tuple[list[CasePair], list[str]]:
    """The pairs whose two files exist, and the cases left out; an error listing the missing files
    unless `ignore_missing`. `hint` says how to make the missing files."""
    missing = missing_files(pairs)
    if not missing:
        return pairs, []
    complete = [pair for pair in pairs if pair.reference.is_file() and pair.prediction.is_file()]
    if not ignore_missing:
        lines = [f"missing in {folder} ({len(names)}): {listed(names)}" for folder, names in missing.items()]
        raise SDMCError("reference and prediction files do not match:\n  " + "\n  ".join(lines) + "\n"
                        + (f"{hint}; or " if hint else "") + f"use --ignore_missing to evaluate the {len(complete)} "
                        "cases that have both files")
    left_out = sorted({pair.case for pair in pairs} - {pair.case for pair in complete})
    log.warning("--ignore_missing: left out %d of %d cases without both files: %s", len(left_out), len(pairs),
                listed(left_out))
    return complete, left_out


def score_pair(pair: CasePair) -> CaseResult | str:
    """The case's scores, or a line saying why it cannot be scored (collected, then reported together)."""
    try:
        reference, spacing = read_label_map(pair.reference)
        prediction, _ = read_label_map(pair.prediction)
    except SDMCError as error:
        return str(error)
    if prediction.shape != reference.shape:
        return f"{pair.prediction}: shape {prediction.shape} differs from the reference's {reference.shape}"
    return evaluate_case(pair.case, prediction, reference, spacing)


def evaluate_pairs(pairs: list[CasePair], num_processes: int, left_out: Sequence[str] = ()) -> dict[str, Any]:
    """The summary of the pairs (all files must exist); one error listing every case that cannot be scored."""
    if not pairs:
        raise SDMCError("no cases to evaluate: no label maps (.png, .nii.gz, .nii) with both a reference and a "
                        "prediction")
    outcomes = list(parallel_map(score_pair, pairs, num_processes, "evaluating"))
    problems = [outcome for outcome in outcomes if isinstance(outcome, str)]
    if problems:
        raise SDMCError(f"{len(problems)} of {len(pairs)} cases cannot be evaluated:\n  "
                        + listed(problems, separator="\n  "))
    summary = summarise(outcomes)
    summary["left_out"] = {"count": len(left_out), "cases": list(left_out),
                           "reason": "no reference or no prediction file (--ignore_missing)"}
    patients = patients_of_references({pair.reference.parent for pair in pairs}, [pair.case for pair in pairs])
    summary["patients"] = patient_block(summary["metric_per_case"], patients)
    return summary


def evaluate_and_write(pairs: list[CasePair], output: Path, num_processes: int, ignore_missing: bool = False,
                       hint: str = "") -> dict[str, Any]:
    pairs, left_out = complete_pairs(pairs, ignore_missing, hint)
    summary = evaluate_pairs(pairs, num_processes, left_out)
    write_summary(output, summary)
    stroke2021, patients = summary["stroke2021"], summary["patients"]
    log.info("%d cases: Stroke2021 DSC Mean %.4f (IS %.4f, HS %.4f); wrote %s", len(pairs),
             stroke2021["DSC"]["Mean"], stroke2021["DSC"]["IS"], stroke2021["DSC"]["HS"], output)
    if patients["ci95"] is None:
        log.info("no intervals over patients: %s", patients["reason"])
    elif interval := patients["ci95"]["DSC"]["Mean"]:
        log.info("%d patients: DSC Mean 95%% bootstrap interval [%.4f, %.4f]", patients["n_patients"], *interval)
    return summary


def crossval_pairs(model: TrainedModel, folds: list[int]) -> list[CasePair]:
    """The validation pairs of all the folds, scored together as one cross-validation."""
    return [pair for fold in folds for pair in model.validation_pairs(fold)]


def crossval_summary_path(model: TrainedModel, folds: list[int]) -> Path:
    """Where a model's summary of these folds goes: the fold's validation folder for one fold."""
    if len(folds) == 1:
        return model.validation_folder(folds[0]) / SUMMARY_FILE
    return model.crossval_folder(folds) / SUMMARY_FILE


def evaluate_model(model: TrainedModel, folds: list[int], num_processes: int,
                   ignore_missing: bool = False) -> dict[str, Any]:
    """Score the folds' validation predictions together and write the summary (see `crossval_summary_path`)."""
    hint = f"re-run the validation: `{model.train_command('FOLD', '--val')}`"
    return evaluate_and_write(crossval_pairs(model, folds), crossval_summary_path(model, folds), num_processes,
                              ignore_missing, hint)


def preprocessed_dataset(dataset_id: int) -> Path:
    """The preprocessed folder of a dataset: its splits, references and name."""
    return find_dataset(paths.preprocessed_root(), dataset_id)


def model_of_dataset(dataset_id: int, trainer: str, plans_name: str, configuration: str) -> TrainedModel:
    """A trained model of a dataset, with the dataset's preprocessed folder for its validation cases."""
    preprocessed = preprocessed_dataset(dataset_id)
    return TrainedModel.of(preprocessed.name, trainer, plans_name, configuration, preprocessed)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdmc_evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("-ref", type=Path, help="folder of reference label maps")
    parser.add_argument("-pred", type=Path, help="folder of predicted label maps (same file names)")
    parser.add_argument("-o", dest="output", type=Path, help="summary file (default PRED/summary.json)")
    parser.add_argument("-d", dest="dataset_id", type=non_negative_int,
                        help="dataset id: evaluate a trained model's validation")
    parser.add_argument("-tr", dest="trainer", help="with -d: the trainer")
    parser.add_argument("-p", dest="plans", default="sdmcPlans", help="with -d: plans name (default sdmcPlans)")
    parser.add_argument("-c", dest="configuration", default="2d", help="with -d: configuration (default 2d)")
    parser.add_argument("-f", dest="folds", type=non_negative_int, nargs="+",
                        help="with -d: the fold(s); default every fold found, scored together")
    add_num_processes_argument(parser)
    parser.add_argument("--ignore_missing", action="store_true",
                        help="evaluate the cases that have both files and record the others as left out")
    args = parser.parse_args(argv)
    by_folders = args.ref is not None or args.pred is not None
    by_model = args.dataset_id is not None or args.trainer is not None
    complete = args.ref and args.pred if by_folders else args.dataset_id is not None and args.trainer
    if by_folders == by_model or not complete:
        parser.error("give either -ref and -pred, or -d and -tr")
    if by_model and args.output or by_folders and args.folds:
        parser.error("-o goes with -ref/-pred (a model's summary goes to its fold or cross-validation folder), "
                     "-f with -d/-tr")
    return args


@console_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    if args.ref:
        output = args.output or args.pred / SUMMARY_FILE
        evaluate_and_write(folder_pairs(args.ref, args.pred), output, args.num_processes, args.ignore_missing)
    else:
        model = model_of_dataset(args.dataset_id, args.trainer, args.plans, args.configuration)
        folds = sorted(set(args.folds)) if args.folds else model.numbered_folds()
        evaluate_model(model, folds, args.num_processes, args.ignore_missing)
        output = crossval_summary_path(model, folds)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
