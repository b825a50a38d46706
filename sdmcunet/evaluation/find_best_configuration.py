"""`sdmc_find_best_configuration`: the best model, or pair ensemble, on cross-validation.

    sdmc_find_best_configuration -d 2021                        # every trained model of the dataset
    sdmc_find_best_configuration -d 2021 -tr UNetTrainer SDMCFinetunedTrainer -f 0 1 2 3 4

Each model is scored on its folds' validation predictions together, each pair of models as the
ensemble of their validation probabilities (`sdmc_train ... --npz`), all by the Stroke2021 DSC
Mean. Small-component removal is then decided on the best one's cross-validation predictions.
Writes `find_best_configuration.json` (every candidate's score, the choice, the postprocessing)
and `inference_instructions.txt` (the commands that reproduce the best prediction) into
`$SDMC_results/Dataset{ID}_{Name}/`.
"""

import argparse
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdmcunet.ensembling.ensemble import ensemble_jobs, missing_probabilities, run_ensemble
from sdmcunet import paths
from sdmcunet.evaluation.evaluate_predictions import (
    crossval_pairs, evaluate_and_write, evaluate_model, model_of_dataset, preprocessed_dataset,
)
from sdmcunet.evaluation.metrics import to_json_safe
from sdmcunet.postprocessing.remove_small_components import (
    POSTPROCESSING_FILE, decide_postprocessing, helps, write_postprocessing,
)
from sdmcunet.experiment_planning.plans import MASK_AUTOENCODER_FAMILY
from sdmcunet.results.layout import SUMMARY_FILE
from sdmcunet.results.trained_model import CasePair, TrainedModel, models_in
from sdmcunet.training.trainers import TRAINERS, nnUNetTrainer
from sdmcunet.utils.cli import add_num_processes_argument, configure_logging, console_entry, non_negative_int
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_bytes, atomic_write_json
from sdmcunet.utils.listing import listed

log = logging.getLogger("sdmcunet.evaluation")
RESULT_FILE = "find_best_configuration.json"
INSTRUCTIONS_FILE = "inference_instructions.txt"
DEFAULT_FOLDS = [0, 1, 2, 3, 4]
ENSEMBLES_FOLDER = "ensembles"
NNUNET_NOTE = ("nnUNetv2_predict reads INPUT_FOLDER in nnU-Net's naming ({case}_0000{ending}, one file per channel "
               "of dataset.json, as in imagesTr), which sdmc_predict reads too; the nnUNet_* folders are where "
               "sdmc_train -tr nnUNetTrainer put nnU-Net's data and model.")


@dataclass(frozen=True)
class Candidate:
    """A model or an ensemble, with its cross-validation predictions and their summary."""

    name: str
    members: tuple[TrainedModel, ...]
    folder: Path  # the model or ensemble folder: its postprocessing.json goes here
    pairs: list[CasePair]  # cross-validation predictions and references
    summary: dict[str, Any]

    @property
    def score(self) -> float:
        """Stroke2021 DSC Mean; -inf when undefined (no lesion in any reference), so it never wins."""
        score = self.summary["stroke2021"]["DSC"]["Mean"]
        return -math.inf if math.isnan(score) else score

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "members": [model.trainer for model in self.members], "folder": str(self.folder),
                "DSC_Mean": self.summary["stroke2021"]["DSC"]["Mean"], "stroke2021": self.summary["stroke2021"]}


def results_folder(model: TrainedModel) -> Path:
    """The dataset's folder of trained models, ensembles and the choice between them."""
    return model.folder.parent


def models_of_dataset(dataset_id: int, plans: str, configuration: str) -> list[TrainedModel]:
    """Every model folder of the dataset trained with these plans and configuration."""
    preprocessed = preprocessed_dataset(dataset_id)
    return [model for model in models_in(paths.results_root() / preprocessed.name, plans, configuration, preprocessed)
            if not _reconstructs_masks(model.trainer)]


def _reconstructs_masks(trainer: str) -> bool:
    """The mask autoencoder's validation scores reconstructions, not segmentations of images."""
    return trainer in TRAINERS.names() and TRAINERS.get_registered(trainer).family == MASK_AUTOENCODER_FAMILY


def select_models(dataset_id: int, trainers: list[str] | None, plans: str, configuration: str,
                  folds: list[int]) -> tuple[list[TrainedModel], dict[str, list[int]]]:
    """The models to compare, and the trained ones left out for lacking folds (only when found, not named)."""
    if trainers:
        models = [model_of_dataset(dataset_id, trainer, plans, configuration) for trainer in dict.fromkeys(trainers)]
        for model in models:
            for fold in folds:
                model.check_validation(fold)
        return models, {}
    models, incomplete = [], {}
    for model in models_of_dataset(dataset_id, plans, configuration):
        if missing := [fold for fold in folds if not model.has_validation(fold)]:
            incomplete[model.name] = missing
            log.warning("left out %s: no validation predictions of fold(s) %s", model.name, listed(map(str, missing)))
        else:
            models.append(model)
    if not models:
        raise SDMCError(f"no model of dataset {dataset_id} with plans {plans} and configuration {configuration} has "
                        f"validation predictions of folds {listed(map(str, folds))}; train each fold with "
                        f"`sdmc_train {dataset_id} {configuration} FOLD -tr TRAINER -p {plans}`")
    return models, incomplete


def model_candidate(model: TrainedModel, folds: list[int], num_processes: int) -> Candidate:
    summary = evaluate_model(model, folds, num_processes)
    return Candidate(model.name, (model,), model.folder, crossval_pairs(model, folds), summary)


def check_probabilities(members: tuple[TrainedModel, ...], folds: list[int]) -> None:
    """An error naming each validation folder without probabilities and the command that writes them."""
    problems = []
    for model in members:
        for fold in folds:
            if missing := missing_probabilities(model.validation_folder(fold), model.validation_cases(fold)):
                problems.append(f"{model.validation_folder(fold)} lacks probabilities (.npz) of {len(missing)} cases "
                                f"({listed(missing, 5)}): re-run `{model.train_command(fold, '--val', '--npz')}`")
    if problems:
        raise SDMCError("ensembling needs the validation probabilities:\n  " + "\n  ".join(problems))


def ensemble_candidate(members: tuple[TrainedModel, ...], folds: list[int], num_processes: int) -> Candidate:
    """Average the members' validation probabilities fold by fold into one folder, and score it."""
    name = "___".join(["ensemble", *(model.name for model in members), members[0].crossval_folder(folds).name])
    folder = results_folder(members[0]) / ENSEMBLES_FOLDER / name
    jobs = [job for fold in folds for job in ensemble_jobs(
        [model.validation_folder(fold) for model in members], folder, members[0].validation_cases(fold))]
    run_ensemble(jobs, num_processes)
    pairs = [CasePair(job.case, members[0].reference(job.case), job.output) for job in jobs]
    summary = evaluate_and_write(pairs, folder / SUMMARY_FILE, num_processes)
    return Candidate(name, members, folder, pairs, summary)


def predict_commands(model: TrainedModel, output: str, folds: list[int], save_probabilities: bool) -> list[str]:
    """The commands that predict INPUT_FOLDER into `output` with the model: nnU-Net's own for nnUNetTrainer, whose
    networks sdmc_predict does not build."""
    if model.trainer == nnUNetTrainer.__name__:
        return nnUNetTrainer.prediction_commands(model.plans, folds, output, save_probabilities)
    return [" ".join([
        "sdmc_predict", "-i", "INPUT_FOLDER", "-o", output, "-d", str(model.dataset_id), "-tr", model.trainer,
        "-f", *map(str, folds), "-p", model.plans_name, "-c", model.configuration,
        *(["--save_probabilities"] if save_probabilities else []),
    ])]


def inference_instructions(best: Candidate, folds: list[int], postprocessing_file: Path, postprocess: bool) -> str:
    lines = [f"Best on cross-validation (folds {' '.join(map(str, folds))}): {best.name}, "
             f"Stroke2021 DSC Mean {best.score:.4f}.",
             "Run these commands, with your own folder names for INPUT_FOLDER and the OUTPUT_FOLDERs:", ""]
    if len(best.members) == 1:
        lines += predict_commands(best.members[0], "OUTPUT_FOLDER", folds, save_probabilities=False)
    else:
        outputs = [f"OUTPUT_FOLDER_MODEL_{number}" for number in range(1, len(best.members) + 1)]
        lines += [command for model, output in zip(best.members, outputs)
                  for command in predict_commands(model, output, folds, save_probabilities=True)]
        lines.append(f"sdmc_ensemble -i {' '.join(outputs)} -o OUTPUT_FOLDER")
    if postprocess:
        lines.append(f"sdmc_apply_postprocessing -i OUTPUT_FOLDER -o OUTPUT_FOLDER_POSTPROCESSED "
                     f"-pp {postprocessing_file.resolve()}")
    else:
        lines += ["", "Removing small components did not improve the cross-validation: no postprocessing to apply."]
    if any(model.trainer == nnUNetTrainer.__name__ for model in best.members):
        lines += ["", NNUNET_NOTE]
    return "\n".join(lines) + "\n"


def find_best_configuration(dataset_id: int, trainers: list[str] | None, plans: str, configuration: str,
                            folds: list[int], num_processes: int) -> Path:
    """Score every model and pair, decide the postprocessing of the best; returns the instructions file."""
    models, incomplete = select_models(dataset_id, trainers, plans, configuration, folds)
    if len(models) > 1:  # before any scoring, so that a missing file stops the run at once
        check_probabilities(tuple(models), folds)
    candidates = [model_candidate(model, folds, num_processes) for model in models]
    candidates += [ensemble_candidate(pair, folds, num_processes) for pair in itertools.combinations(models, 2)]
    for candidate in candidates:
        log.info("%s: Stroke2021 DSC Mean %.4f", candidate.name, candidate.score)
    best = max(candidates, key=lambda candidate: candidate.score)  # the first of equals: a single model
    postprocessing = decide_postprocessing(best.pairs, num_processes)
    postprocessing_file = best.folder / POSTPROCESSING_FILE
    write_postprocessing(postprocessing_file, postprocessing)

    folder = results_folder(models[0])
    instructions = folder / INSTRUCTIONS_FILE
    atomic_write_json(folder / RESULT_FILE, to_json_safe({
        "dataset": folder.name, "plans": plans, "configuration": configuration, "folds": folds,
        "selection_metric": "Stroke2021 DSC Mean over the cross-validation predictions",
        "candidates": [candidate.record() for candidate in candidates],
        "left_out_models": {name: {"folds_without_validation": missing} for name, missing in incomplete.items()},
        "best": {key: best.record()[key] for key in ("name", "members", "folder", "DSC_Mean")},
        "postprocessing": {"file": str(postprocessing_file), **postprocessing},
        "inference_instructions": str(instructions),
    }))
    atomic_write_bytes(instructions, inference_instructions(best, folds, postprocessing_file,
                                                            helps(postprocessing)).encode("utf-8"))
    return instructions


@console_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdmc_find_best_configuration", description=__doc__.splitlines()[0])
    parser.add_argument("-d", dest="dataset_id", type=non_negative_int, required=True, help="dataset id, e.g. 2021")
    parser.add_argument("-tr", dest="trainers", nargs="+", default=None,
                        help="trainers to compare (default: every model of the dataset with all the folds)")
    parser.add_argument("-p", dest="plans", default="sdmcPlans", help="plans name (default sdmcPlans)")
    parser.add_argument("-c", dest="configuration", default="2d", help="configuration (default 2d)")
    parser.add_argument("-f", dest="folds", type=non_negative_int, nargs="+", default=DEFAULT_FOLDS,
                        help="cross-validation folds (default 0 1 2 3 4)")
    add_num_processes_argument(parser)
    args = parser.parse_args(argv)
    configure_logging()
    instructions = find_best_configuration(args.dataset_id, args.trainers, args.plans, args.configuration,
                                           sorted(set(args.folds)), args.num_processes)
    print(instructions.read_text(encoding="utf-8"), end="")
    print(f"(written to {instructions} and {instructions.with_name(RESULT_FILE)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
