"""U-Net, SDMC-Seg and nnU-Net v2 on the same patient-grouped fold, scored by the Stroke2021 protocol
with intervals over patients and paired tests, as JSON.

Each model trains fold 0 of the synthetic benchmark dataset on the CPU for a stated budget of epochs
(nnU-Net through `sdmc_train -tr nnUNetTrainer`, its own planning, preprocessing and network, on
this project's splits), then `sdmc_evaluate -d 2021 -tr T -f 0` scores its validation with 95%
bootstrap intervals over patients, and SDMC-Seg is compared with each of the others by a paired
Wilcoxon signed-rank test over patients (Holm-corrected), as `sdmc_report` does.

    python benchmarks/bench_comparison.py [--patients 120] [--size 256] [--unet_epochs 30] [--sdmc_epochs 20]
                                          [--mask_autoencoder_epochs 8] [--nnunet_epochs 10] [--nnunet_iterations 50]

The defaults give each model about 12 to 20 minutes of training on 2 CPU cores (one U-Net epoch about 25 s, a mask
autoencoder epoch 56 s, an SDMC-Seg epoch 38 s); nnU-Net trains its CPU plans (`nnUNetPlans_cpu`, see nnunet.py).
"""

import argparse
import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

from sdmcunet.evaluation.metrics import to_json_safe
from sdmcunet.evaluation.statistics import case_table, holm_correct, paired_wilcoxon, patients_from_raw_dataset
from sdmcunet.results.trained_model import TrainedModel

from _synthetic import DATASET, planned_synthetic_dataset, run_minutes

PROPOSED = "SDMCFinetunedTrainer"


def train(trainer: str, epochs: int, environment: dict, iterations: int | None = None) -> float:
    """Minutes of `sdmc_train 2021 2d 0 -tr trainer` with `epochs` (and iterations per epoch)."""
    options = ["--epochs", str(epochs)] + (["--iterations_per_epoch", str(iterations)] if iterations else [])
    return run_minutes("sdmc_train", "2021", "2d", "0", "-tr", trainer, "--npz", *options, environment=environment)


def fold_summary(trainer: str, environment: dict, folder: Path) -> dict:
    """The fold-0 validation scored by `sdmc_evaluate` (with the patients block)."""
    run_minutes("sdmc_evaluate", "-d", "2021", "-tr", trainer, "-f", "0", environment=environment)
    return TrainedModel(folder / "results" / DATASET / f"{trainer}__sdmcPlans__2d").fold("0").summary


def model_entry(summary: dict, minutes: float, budget: str) -> dict:
    stroke2021, patients = summary["stroke2021"], summary["patients"]
    return {"budget": budget, "training_minutes": round(minutes, 1), "n_patients": patients["n_patients"],
            "n_slices": stroke2021["n_slices"],
            "DSC": {name: stroke2021["DSC"][name] for name in ("IS", "HS", "Mean")},
            "DSC_ci95": patients["ci95"]["DSC"] if patients["ci95"] else patients["reason"],
            "HD95": patients["HD95"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--unet_epochs", type=int, default=30)
    parser.add_argument("--mask_autoencoder_epochs", type=int, default=8)
    parser.add_argument("--sdmc_epochs", type=int, default=20)
    parser.add_argument("--nnunet_epochs", type=int, default=10)
    parser.add_argument("--nnunet_iterations", type=int, default=50, help="nnU-Net iterations per epoch")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    results = {"patients": args.patients, "image_size": args.size}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        _, environment = planned_synthetic_dataset(folder, args.patients, args.size)
        minutes = {
            "UNetTrainer": (train("UNetTrainer", args.unet_epochs, environment), f"{args.unet_epochs} epochs"),
            PROPOSED: (train("MaskAutoencoderTrainer", args.mask_autoencoder_epochs, environment)
                       + train(PROPOSED, args.sdmc_epochs, environment),
                       f"mask autoencoder {args.mask_autoencoder_epochs} epochs + {args.sdmc_epochs} epochs"),
            "nnUNetTrainer": (train("nnUNetTrainer", args.nnunet_epochs, environment, args.nnunet_iterations),
                              f"{args.nnunet_epochs} epochs of {args.nnunet_iterations} iterations"),
        }
        summaries = {trainer: fold_summary(trainer, environment, folder) for trainer in minutes}
        results["models"] = {trainer: model_entry(summaries[trainer], *minutes[trainer]) for trainer in minutes}
        tables = {trainer: case_table(summary["metric_per_case"]) for trainer, summary in summaries.items()}
        cases = sorted({case for table in tables.values() for case in table.cases})
        patient_of = patients_from_raw_dataset(folder / "raw" / DATASET, cases).patient_of
        comparisons = holm_correct([paired_wilcoxon(PROPOSED, tables[PROPOSED], other, tables[other], patient_of)
                                    for other in tables if other != PROPOSED])
        results["paired_tests"] = [asdict(comparison) for comparison in comparisons]
    print(json.dumps(to_json_safe(results), indent=2))  # a test without patients has NaN: JSON null


if __name__ == "__main__":
    main()
