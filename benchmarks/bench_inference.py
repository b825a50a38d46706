"""Prediction and evaluation speed on the CPU plan, as JSON.

1. `sdmc_predict` end to end (model loading, reading, preprocessing, network, mapping back,
   writing) per slice, against the bare network forward time of the same model on the same
   slices already in memory, in the same run (framework overhead target <= 15%), with the CPU
   time per slice of the work around the network (reading, preprocessing, mapping back, writing)
   that shares the cores with it;
2. a volume: one 40-slice 512 x 512 DICOM series (made from a real slice of pydicom-data),
   `sdmc_predict` wall time (3D NIfTI, DICOM SEG and lesion volumes written) against the bare
   network forward over the same slices in the same run (target: at most 1.3x);
3. `sdmc_evaluate` slices per second against nnU-Net v2's `compute_metrics_on_folder` on the
   same folders (target: faster).

The models are trained for a few iterations only: speed does not depend on their quality.

    python benchmarks/bench_inference.py [--patients 16] [--size 512] [--trainers UNetTrainer SDMCFinetunedTrainer]
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pydicom.data import get_testdata_file

from sdmcunet.dataset_conversion.demo_series import write_series
from sdmcunet.inference import predict
from sdmcunet.inference.input_files import find_input_cases
from sdmcunet.inference.model_loading import load_model
from sdmcunet.inference.predictor import BatchPrediction, PredictionOptions, export_case, png_windows, prepare_case
from sdmcunet.results.layout import FINAL_CHECKPOINT, references_folder

from _synthetic import DATASET, planned_synthetic_dataset

TARGET_OVERHEAD = 0.15
TARGET_VOLUME_RATIO = 1.3
VOLUME_SLICES = 40
VOLUME_SOURCE = "693_UNCR.dcm"  # a real 512 x 512 head CT slice of pydicom-data
REPEATS = 3  # best of: the machine may be shared
WORK_SAMPLE = 20  # slices timed for the per-slice work around the network
PREREQUISITES = {"SDMCFinetunedTrainer": ["MaskAutoencoderTrainer"]}


def train_briefly(name: str, environment: dict) -> None:
    for trainer in PREREQUISITES.get(name, []) + [name]:
        subprocess.run([str(Path(sys.executable).parent / "sdmc_train"), "2021", "2d", "0", "-tr", trainer,
                        "--epochs", "1", "--iterations_per_epoch", "5"], env=os.environ | environment, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def prepared_cases(model, images: Path) -> list:
    channels = model.dataset.channel_names
    needed = {channel.source_channel for channel in model.configuration.input_channels}
    cases = find_input_cases(images, model.dataset, needed, set(png_windows(model.configuration))).cases.values()
    return [prepare_case(case, model.configuration, channels, with_display=False) for case in cases]


def bare_forward_seconds(model_folder: Path, images: Path) -> tuple[float, int]:
    """Seconds per slice of the network alone, on preprocessed slices in memory, in planned batches; and how
    many slices."""
    model = load_model(model_folder, ["0"], FINAL_CHECKPOINT, torch.device("cpu"))
    inputs = np.concatenate([case.inputs for case in prepared_cases(model, images)])
    segmenter, batch_size = model.folds[0].segmenter, model.family.batch_size
    times = []
    with torch.no_grad():
        segmenter(torch.from_numpy(inputs[:batch_size]))  # warm-up
        for _ in range(REPEATS):
            start = time.perf_counter()
            for first in range(0, len(inputs), batch_size):
                segmenter(torch.from_numpy(inputs[first:first + batch_size]))
            times.append((time.perf_counter() - start) / len(inputs))
    return min(times), len(inputs)


def per_slice_work_seconds(model_folder: Path, images: Path, output: Path) -> dict:
    """CPU seconds per slice, in one thread, of the work around the network that `sdmc_predict`'s
    worker processes do: reading and preprocessing a slice, and mapping its probabilities back
    and writing its label map. On a machine with few cores this work competes with the network."""
    torch.set_num_threads(1)
    try:
        model = load_model(model_folder, ["0"], FINAL_CHECKPOINT, torch.device("cpu"))
        channels = model.dataset.channel_names
        needed = {channel.source_channel for channel in model.configuration.input_channels}
        cases = list(find_input_cases(images, model.dataset, needed).cases.values())[:WORK_SAMPLE]
        start = time.process_time()
        prepared = [prepare_case(case, model.configuration, channels, with_display=False) for case in cases]
        read_and_preprocess = (time.process_time() - start) / len(cases)
        classes = len(model.dataset.labels)
        uniform = BatchPrediction(np.full((1, classes, *prepared[0].inputs.shape[2:]), 1 / classes, np.float32),
                                  None, None)
        start = time.process_time()
        for case in prepared:
            export_case(case, uniform, output, PredictionOptions(), model.dataset.labels, model.trainer_name)
        export = (time.process_time() - start) / len(cases)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    return {"read_and_preprocess": round(read_and_preprocess, 4), "map_back_and_write": round(export, 4)}


def predict_seconds(model_folder: Path, images: Path, output: Path, n_slices: int) -> float:
    """Seconds per slice of the whole `sdmc_predict` command (model loading included), in a process
    that has imported its libraries once (the first run, not timed)."""
    command = ["-i", str(images), "-o", str(output), "-m", str(model_folder), "-f", "0", "--overwrite"]
    times = []
    for _ in range(REPEATS + 1):
        start = time.perf_counter()
        assert predict.main(command) == 0
        times.append((time.perf_counter() - start) / n_slices)
    return min(times[1:])


def evaluation_rates(reference: Path, prediction: Path, workers: int) -> dict:
    """Slices per second of sdmc_evaluate and of nnU-Net's compute_metrics_on_folder."""
    from sdmcunet.evaluation import evaluate_predictions

    n_slices = len(list(reference.glob("*.nii.gz")))
    start = time.perf_counter()
    assert evaluate_predictions.main(["-ref", str(reference), "-pred", str(prediction), "-o",
                                      str(prediction.parent / "sdmc_summary.json"), "-np", str(workers)]) == 0
    rates = {"sdmc_evaluate_slices_per_second": round(n_slices / (time.perf_counter() - start), 2)}
    try:
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    except ImportError:
        return rates | {"nnunet": "not installed"}
    start = time.perf_counter()
    compute_metrics_on_folder(str(reference), str(prediction), str(prediction.parent / "nnunet_summary.json"),
                              SimpleITKIO(), ".nii.gz", [1, 2], None, workers)
    nnunet_rate = n_slices / (time.perf_counter() - start)
    return rates | {"nnunet_compute_metrics_on_folder_slices_per_second": round(nnunet_rate, 2),
                    "evaluate_faster_than_nnunet": rates["sdmc_evaluate_slices_per_second"] > nnunet_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--trainers", nargs="+", default=["UNetTrainer", "SDMCFinetunedTrainer"])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    workers = os.cpu_count() or 1
    results = {"cpus": workers, "image_size": args.size}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        preprocessed, environment = planned_synthetic_dataset(folder, args.patients, args.size)
        images = folder / "raw" / DATASET / "imagesTr"
        results["slices"] = len(list(images.glob("*_0000.nii.gz")))
        series = folder / "series"
        write_series(Path(get_testdata_file(VOLUME_SOURCE)), series, VOLUME_SLICES)
        for name in args.trainers:
            train_briefly(name, environment)
            model_folder = folder / "results" / DATASET / f"{name}__sdmcPlans__2d"
            bare, n_slices = bare_forward_seconds(model_folder, images)
            end_to_end = predict_seconds(model_folder, images, folder / "predictions" / name / "labels", n_slices)
            volume_bare, volume_slices = bare_forward_seconds(model_folder, series)
            volume = predict_seconds(model_folder, series, folder / "predictions" / name / "volume", volume_slices)
            results[name] = {"predict_seconds_per_slice": round(end_to_end, 4),
                             "bare_forward_seconds_per_slice": round(bare, 4),
                             "framework_overhead": round(end_to_end / bare - 1, 3),
                             "target_overhead_at_most": TARGET_OVERHEAD,
                             "worker_cpu_seconds_per_slice": per_slice_work_seconds(
                                 model_folder, images, folder / "predictions" / name / "work"),
                             "volume": {"slices": volume_slices, "predict_seconds": round(volume * volume_slices, 2),
                                        "bare_forward_seconds": round(volume_bare * volume_slices, 2),
                                        "ratio": round(volume / volume_bare, 3),
                                        "target_ratio_at_most": TARGET_VOLUME_RATIO}}
        results["evaluation"] = evaluation_rates(references_folder(preprocessed),
                                                 folder / "predictions" / args.trainers[0] / "labels", workers)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
