"""SDMC-Seg on the CPU plan, as JSON.

1. mask autoencoder: reconstruction Dice of the fold's validation lesion masks after
   `--autoencoder-epochs` of `MaskAutoencoderTrainer` (default 60, about 14 minutes on 2 cores;
   the CPU plan's 20 keep the demo short) (target >= 0.95);
2. `SDMCFinetunedTrainer` validation mean Dice (IS, HS) after `--minutes` of training (default
   15, target >= 0.5), and `UNetTrainer` under the same budget for comparison;
3. inference time per slice: one step against LDM's 50-step DDIM sampler (eta 1, the reference code's
   evaluation setting: `SDMCSeg.segment_multistep`) on the same model.

    python benchmarks/bench_sdmc.py [--patients N (default 300, _synthetic.QUALITY_PATIENTS)] [--size 256] [--minutes 15] [--autoencoder-epochs 60] [--no-unet]
"""

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sdmcunet.experiment_planning.plans import load_plans
from sdmcunet.inference.model_loading import load_model
from sdmcunet.preprocessing.preprocessed_cases import PreprocessedCases
from sdmcunet.results import layout
from sdmcunet.results.splits import fold_cases
from sdmcunet.results.trained_model import TrainedModel
from sdmcunet.training.trainers import TRAINERS

from _synthetic import (
    DATASET, QUALITY_PATIENTS, patient_interval, planned_synthetic_dataset, read_stroke2021, run_minutes,
)


def train(name: str, preprocessed: Path, environment: dict, epochs: int | None = None) -> dict:
    minutes = run_minutes("sdmc_train", "2021", "2d", "0", "-tr", name, *(["--epochs", str(epochs)] if epochs else []),
                          environment=environment)
    summary_path = TrainedModel.find(2021, name, "sdmcPlans", "2d").fold(0).validation / layout.SUMMARY_FILE
    return {"minutes": round(minutes, 2), "stroke2021": read_stroke2021(summary_path),
            "mean_dice_95ci_over_patients": patient_interval(summary_path, Path(environment["SDMC_raw"]) / DATASET)}


def epochs_for(name: str, preprocessed: Path, minutes: float) -> int:
    """Epochs of `name` that fit in `minutes`, from the time of a few training steps."""
    trainer = TRAINERS.get(name)(load_plans(preprocessed / "sdmcPlans.json"), "2d", 0, preprocessed, "cpu")
    trainer.initialize()
    train_cases, _ = trainer.split()
    batches = trainer._training_batches(PreprocessedCases(preprocessed / trainer.configuration.data_identifier,
                                                          train_cases))
    batch = next(batches)
    trainer.train_step(batch)
    start = time.perf_counter()
    for _ in range(5):
        trainer.train_step(batch)
    epoch_seconds = (time.perf_counter() - start) / 5 * trainer.schedule.iterations_per_epoch * 1.15  # + validation
    return max(1, int(minutes * 60 // epoch_seconds))


def inference_seconds(preprocessed: Path, n_slices: int = 8) -> tuple[float, float]:
    """Seconds per slice of the trained fold-0 model (EMA weights, as `sdmc_predict` loads it)."""
    model = TrainedModel.find(2021, "SDMCFinetunedTrainer", "sdmcPlans", "2d")
    loaded = load_model(model.folder, ["0"], layout.FINAL_CHECKPOINT, torch.device("cpu"))
    sdmc = loaded.folds[0].segmenter.model
    cases = PreprocessedCases(preprocessed / loaded.configuration.data_identifier, fold_cases(preprocessed, 0)["val"])
    images = [torch.from_numpy(np.asarray(cases.image(case))[None].astype(np.float32))
              for case in cases.case_ids[:n_slices]]
    with torch.no_grad():
        sdmc.segment(images[0])  # warm-up
        start = time.perf_counter()
        for image in images:
            sdmc.segment(image)
        one_step = (time.perf_counter() - start) / len(images)
        start = time.perf_counter()
        for image in images:
            sdmc.segment_multistep(image, 50, loaded.family.diffusion, eta=1.0)
    return one_step, (time.perf_counter() - start) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=QUALITY_PATIENTS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--autoencoder-epochs", type=int, default=60)
    parser.add_argument("--no-unet", dest="unet", action="store_false", help="skip the U-Net comparison")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        preprocessed, environment = planned_synthetic_dataset(folder, args.patients, args.size)

        autoencoder = train("MaskAutoencoderTrainer", preprocessed, environment, args.autoencoder_epochs)
        sdmc_epochs = epochs_for("SDMCFinetunedTrainer", preprocessed, args.minutes)
        sdmc = train("SDMCFinetunedTrainer", preprocessed, environment, sdmc_epochs)
        one_step, fifty_steps = inference_seconds(preprocessed)
        results = {
            "cpus": os.cpu_count(), "cases": len(list((folder / "raw" / DATASET / "labelsTr").iterdir())),
            "mask_autoencoder_epochs": args.autoencoder_epochs, "mask_autoencoder_minutes": autoencoder["minutes"],
            "mask_autoencoder_reconstruction_dice": autoencoder["stroke2021"]["DSC"],
            "mask_autoencoder_reconstruction_mean_dice_95ci_over_patients": autoencoder["mean_dice_95ci_over_patients"],
            "target_reconstruction_mean_dice_at_least": 0.95,
            "sdmc_finetuned_epochs": sdmc_epochs, "sdmc_finetuned_minutes_including_validation": sdmc["minutes"],
            "sdmc_finetuned_validation_dice": sdmc["stroke2021"]["DSC"],
            "sdmc_finetuned_validation_mean_dice_95ci_over_patients": sdmc["mean_dice_95ci_over_patients"],
            "validation_n_slices": sdmc["stroke2021"]["n_slices"], "target_mean_dice_at_least": 0.5,
            "single_step_seconds_per_slice": round(one_step, 4),
            "ldm_ddim50_eta1_seconds_per_slice": round(fifty_steps, 4),
            "ldm_ddim50_over_single_step": round(fifty_steps / one_step, 1),
        }
        if args.unet:
            unet_epochs = epochs_for("UNetTrainer", preprocessed, args.minutes)
            unet = train("UNetTrainer", preprocessed, environment, unet_epochs)
            results |= {"unet_epochs": unet_epochs, "unet_minutes_including_validation": unet["minutes"],
                        "unet_validation_dice": unet["stroke2021"]["DSC"],
                        "unet_validation_mean_dice_95ci_over_patients": unet["mean_dice_95ci_over_patients"]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
