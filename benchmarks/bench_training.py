"""Training speed and quality on the CPU plan, as JSON.

1. data loader: augmented batches per second (multi-process augmenter, planned batch) against
   the training step rate (the loader must not be the bottleneck);
2. trainer overhead: `UNetTrainer.train_step` against a bare PyTorch loop (same network,
   batch, loss and optimiser; target overhead <= 10%);
3. quality: `sdmc_train 2021 2d FOLD -tr UNetTrainer` for as many epochs as fit in `--minutes`
   (default 10) on each of `--folds` (default all five), then the validation mean Dice over IS
   and HS (target >= 0.7) of the folds scored together (`sdmc_evaluate -d 2021 -tr UNetTrainer`,
   a cross-validation), each fold's, and a 95% interval from resampling patients. One fold's
   validation holds about 15 ischemic patients, too few for a target: in fold 0, one patient's
   faint infarct, mostly missed on its nine slices, costs the mean about 0.05.

    python benchmarks/bench_training.py [--patients N (default 300, _synthetic.QUALITY_PATIENTS)] [--size 256] [--minutes 10] [--folds 0 1 2 3 4]
"""

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sdmcunet.evaluation.evaluate_predictions import crossval_summary_path
from sdmcunet.experiment_planning.plans import load_plans
from sdmcunet.preprocessing.preprocessed_cases import PreprocessedCases
from sdmcunet.results.layout import SUMMARY_FILE
from sdmcunet.results.trained_model import TrainedModel
from sdmcunet.training.trainers import TRAINERS

from _synthetic import QUALITY_PATIENTS, patient_interval, planned_synthetic_dataset, read_stroke2021, run_minutes

TARGET_OVERHEAD = 0.10
TARGET_DICE = 0.7


def make_trainer(preprocessed: Path, workers: int):
    plans = load_plans(preprocessed / "sdmcPlans.json")
    trainer = TRAINERS.get("UNetTrainer")(plans, "2d", 0, preprocessed, "cpu", num_loader_workers=workers)
    trainer.initialize()
    return trainer


def loader_rate(trainer, n_batches: int = 40) -> float:
    batches = trainer._training_batches(trainer_cases(trainer))
    next(batches)  # workers started
    start = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    rate = n_batches / (time.perf_counter() - start)
    if hasattr(batches, "_finish"):
        batches._finish()
    return rate


def step_times(trainer, batch: dict, n_steps: int = 20, rounds: int = 5) -> tuple[float, float]:
    """Seconds per step: the trainer's train_step, and a bare loop on a copy of the same network.

    The two alternate in `rounds` rounds and each gives its median round, so that a slow spell of
    the machine does not land on one side only.
    """
    network = trainer.build_network()
    network.load_state_dict(trainer.module.state_dict())
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    images, labels = batch["data"], batch["seg"]

    def bare_step():
        optimizer.zero_grad(set_to_none=True)
        trainer.loss(network(images), labels).backward()
        optimizer.step()

    def seconds_per_step(step) -> float:
        start = time.perf_counter()
        for _ in range(n_steps):
            step()
        return (time.perf_counter() - start) / n_steps

    for _ in range(3):  # warm-up
        trainer.train_step(batch)
        bare_step()
    timings = [(seconds_per_step(lambda: trainer.train_step(batch)), seconds_per_step(bare_step)) for _ in range(rounds)]
    trainer_rounds, bare_rounds = zip(*timings)
    return statistics.median(trainer_rounds), statistics.median(bare_rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=QUALITY_PATIENTS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--minutes", type=float, default=10.0, help="training time of each fold")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    workers = max(1, (os.cpu_count() or 1) - 1)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        preprocessed, environment = planned_synthetic_dataset(folder, args.patients, args.size)

        trainer = make_trainer(preprocessed, workers)
        loader_batches_per_second = loader_rate(trainer)
        trainer.num_loader_workers = 0
        batch = next(trainer._training_batches(trainer_cases(trainer)))
        trainer_seconds, bare_seconds = step_times(trainer, batch)
        schedule = trainer.schedule
        epoch_seconds = trainer_seconds * schedule.iterations_per_epoch * 1.1  # + validation
        epochs = max(1, int(args.minutes * 60 // epoch_seconds))
        training_minutes = [run_minutes("sdmc_train", "2021", "2d", str(fold), "-tr", "UNetTrainer", "--epochs",
                                        str(epochs), environment=environment) for fold in args.folds]
        model = TrainedModel(TrainedModel.find(2021, "UNetTrainer", "sdmcPlans", "2d").folder, preprocessed)
        fold_means = {fold: round(read_stroke2021(model.validation_folder(fold) / SUMMARY_FILE)["DSC"]["Mean"], 4)
                      for fold in args.folds}
        if len(args.folds) > 1:  # one fold's validation summary was written by its training
            run_minutes("sdmc_evaluate", "-d", "2021", "-tr", "UNetTrainer", "-f", *map(str, args.folds),
                        environment=environment)
        summary_path = crossval_summary_path(model, args.folds)
        stroke = read_stroke2021(summary_path)
        interval = patient_interval(summary_path, folder / "raw" / preprocessed.name)
    print(json.dumps({
        "cpus": os.cpu_count(), "batch_size": trainer.family_settings.batch_size,
        "image_size": list(trainer.configuration.image_size),
        "loader_workers": workers,
        "loader_augmented_batches_per_second": round(loader_batches_per_second, 2),
        "training_steps_per_second": round(1 / trainer_seconds, 2),
        "loader_is_bottleneck": loader_batches_per_second < 1 / trainer_seconds,
        "trainer_step_seconds": round(trainer_seconds, 4), "bare_loop_step_seconds": round(bare_seconds, 4),
        "trainer_overhead": round(trainer_seconds / bare_seconds - 1, 4), "target_overhead_at_most": TARGET_OVERHEAD,
        "unet_folds": args.folds, "unet_epochs": epochs, "unet_iterations": epochs * schedule.iterations_per_epoch,
        "unet_training_minutes_including_validation": [round(minutes, 2) for minutes in training_minutes],
        "unet_validation_dice": stroke["DSC"], "unet_validation_n_slices": stroke["n_slices"],
        "unet_validation_mean_dice_95ci_over_patients": interval,
        "unet_validation_mean_dice_per_fold": fold_means,
        "target_mean_dice_at_least": TARGET_DICE,
    }, indent=2))


def trainer_cases(trainer) -> PreprocessedCases:
    train_cases, _ = trainer.split()
    return PreprocessedCases(trainer.preprocessed_folder / trainer.configuration.data_identifier, train_cases)


if __name__ == "__main__":
    main()
