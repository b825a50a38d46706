"""The side of `sdmc_train -tr nnUNetTrainer` that imports nnunetv2 (see nnunet.py, which imports this module once
the nnUNet_* folders are in the environment): nnU-Net's trainer with sdmc_train's schedule, nnU-Net's planning and
preprocessing, and the history of its training.

As a command it makes a folder written by `nnUNetv2_predict --save_probabilities` one that `sdmc_ensemble` reads
(inference_instructions.txt of `sdmc_find_best_configuration` says when):

    python -m sdmcunet.training.trainers.nnunet_v2 -i NNUNET_PREDICTIONS -o OUTPUT_FOLDER
"""

import argparse
import logging
from pathlib import Path

import torch
from nnunetv2.experiment_planning.plan_and_preprocess_api import (
    extract_fingerprint_dataset, plan_experiment_dataset, preprocess_dataset,
)
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as NnunetTrainer
from torch.backends import cudnn

from sdmcunet.imageio.probabilities import save_probabilities
from sdmcunet.results.history import TrainingHistory
from sdmcunet.training.trainers.nnunet import read_nnunet_case
from sdmcunet.utils.cli import configure_logging, console_entry
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_bytes, make_folder, read_json
from sdmcunet.utils.listing import listed

NNUNET_DATASET_FILE = "dataset.json"  # nnU-Net writes it into its preprocessed, model and prediction folders


class nnUNetTrainer(NnunetTrainer):
    """nnU-Net's trainer under its own name, so that its folders and checkpoints are those of nnU-Net's
    nnUNetTrainer (`nnUNetv2_predict -tr nnUNetTrainer` loads them); it writes checkpoint_latest after every epoch
    (nnU-Net: every 50th), since `sdmc_train --c` continues from the last completed epoch.

    nnU-Net records `__init__`'s arguments by their names to make the trainer again: the signature is its own."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1

    def set_schedule(self, epochs: int | None, iterations_per_epoch: int | None) -> None:
        """sdmc_train's --epochs and --iterations_per_epoch over nnU-Net's own; its validation iterations keep their
        share of the training iterations (nnU-Net: 50 per 250)."""
        if epochs is not None:
            self.num_epochs = epochs
        if iterations_per_epoch is not None:
            share = self.num_val_iterations_per_epoch / self.num_iterations_per_epoch
            self.num_iterations_per_epoch = iterations_per_epoch
            self.num_val_iterations_per_epoch = max(1, round(iterations_per_epoch * share))


def fold_trainer(dataset: Path, plans_file: str, configuration: str, fold: int | str, device: torch.device,
                 resume: bool, epochs: int | None, iterations_per_epoch: int | None) -> nnUNetTrainer:
    """nnU-Net's trainer of a fold of its preprocessed `dataset` with the plans in `plans_file` there, made as
    `nnUNetv2_train` makes it (nnunetv2/run/run_training.py)."""
    plans = read_json(dataset / plans_file) | {"continue_training": resume}
    trainer = nnUNetTrainer(plans, configuration, fold, read_json(dataset / NNUNET_DATASET_FILE), device)
    trainer.set_schedule(epochs, iterations_per_epoch)
    if device.type == "cuda":
        cudnn.deterministic, cudnn.benchmark = False, True
    return trainer


def plan_and_preprocess(dataset_id: int, plans_name: str, gpu_memory_target_gb: float | None, configuration: str,
                        num_processes: int) -> None:
    """`nnUNetv2_plan_and_preprocess -d ID -c CONFIGURATION -overwrite_plans_name PLANS [-gpu_memory_target GB]`,
    made anew: fingerprint, nnU-Net's default planner (at its default memory target when `gpu_memory_target_gb` is
    None), preprocessing (which also copies the references to gt_segmentations)."""
    extract_fingerprint_dataset(dataset_id, num_processes=num_processes, clean=True, verbose=False,
                                show_progress_bar=False)
    plan_experiment_dataset(dataset_id, gpu_memory_target_in_gb=gpu_memory_target_gb, overwrite_plans_name=plans_name)
    disabled = logging.root.manager.disable
    logging.disable(logging.INFO)  # its copying of the references logs a line per case (distutils' copy_file)
    try:
        preprocess_dataset(dataset_id, plans_name, [configuration], [num_processes], show_progress_bar=False)
    finally:
        logging.disable(disabled)


def schedule(trainer: NnunetTrainer) -> dict[str, int]:
    """The schedule nnU-Net trained with, for the record in this project's checkpoint."""
    return {"epochs": trainer.num_epochs, "iterations_per_epoch": trainer.num_iterations_per_epoch,
            "val_iterations_per_epoch": trainer.num_val_iterations_per_epoch}


def training_history(trainer: NnunetTrainer) -> TrainingHistory:
    """The completed epochs nnU-Net's logger holds, as this project's checkpoints keep them (the reports' curves);
    the selection metric is nnU-Net's: the moving average of its pseudo Dice, by which it keeps checkpoint_best."""
    def logged(key: str) -> list:
        return list(trainer.logger.get_value(key, step=None))

    epochs = len(logged("epoch_end_timestamps"))

    def floats(key: str) -> list[float]:
        return [float(value) for value in logged(key)[:epochs]]

    return TrainingHistory(
        train_loss=floats("train_losses"), val_loss=floats("val_losses"),
        val_dice=[[float(dice) for dice in classes] for classes in logged("dice_per_class_or_region")[:epochs]],
        val_selection=floats("ema_fg_dice"), learning_rate=floats("lrs"),
        epoch_seconds=[end - start for start, end in zip(floats("epoch_start_timestamps"),
                                                         floats("epoch_end_timestamps"))])


def convert_predictions(source: Path, output: Path) -> list[str]:
    """Every case `nnUNetv2_predict --save_probabilities` wrote into `source`, into `output`: its label map as
    nnU-Net wrote it (with its input's geometry), its probabilities as (classes, rows, columns) float16; returns the
    cases."""
    dataset = read_json(source / NNUNET_DATASET_FILE)
    file_ending, num_classes = dataset["file_ending"], len(dataset["labels"])
    cases = sorted(path.name.removesuffix(".npz") for path in source.glob("*.npz"))
    if not cases:
        raise SDMCError(f"{source}: no {{case}}.npz; predict with nnUNetv2_predict ... --save_probabilities")
    if without := [case for case in cases if not (source / f"{case}{file_ending}").is_file()]:
        raise SDMCError(f"{source}: no label map ({file_ending}) of {len(without)} cases: {listed(without)}")
    make_folder(output)
    for case in cases:
        _, probabilities = read_nnunet_case(source, case, file_ending, num_classes)
        save_probabilities(output / f"{case}.npz", probabilities)
        atomic_write_bytes(output / f"{case}{file_ending}", (source / f"{case}{file_ending}").read_bytes())
    return cases


@console_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sdmcunet.training.trainers.nnunet_v2",
        description="make a folder of nnUNetv2_predict --save_probabilities one that sdmc_ensemble reads")
    parser.add_argument("-i", dest="source", type=Path, required=True, help="nnUNetv2_predict's output folder")
    parser.add_argument("-o", dest="output", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    configure_logging()
    if args.output.resolve() == args.source.resolve():
        raise SDMCError(f"{args.output}: the output folder must not be the input folder")
    cases = convert_predictions(args.source, args.output)
    print(f"wrote {len(cases)} label maps and probabilities to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
