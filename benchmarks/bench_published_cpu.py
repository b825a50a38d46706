"""The published configuration (the GPU plan's "sd" networks) end to end on this CPU, as JSON.

Every step is the real command, as a user with a GPU plan would run it:

1. a synthetic dataset in the TEKNOFEST layout (`--patients`, default 10), converted, then
   `sdmc_plan_and_preprocess -d 2021 -gpu_memory_target 80` (the documented way to plan for a GPU
   on a machine without one): the published sizes at 256 x 256;
2. stand-in pretrained weights in the CompVis layouts (`_published.write_standin_checkpoints`),
   converted by `sdmc_convert_weights --kind vae` into `$SDMC_weights/sd-kl-f8` and `--kind unet`
   into `$SDMC_weights/lsun_churches256`;
3. the plans edited to batch 1 and one validation batch per epoch, then `sdmc_train 2021 2d FOLD
   -tr T --epochs 1 --iterations_per_epoch 2` for MaskAutoencoderTrainer, SDMCFinetunedTrainer,
   SDMCPretrainedTrainer and UNetTrainer, each ending with the fold's validation; FOLD is the fold
   with the fewest validation slices, to keep the run short;
4. `sdmc_predict` of `--predict-slices` (default 3) of its validation slices from their PNG and
   DICOM files with the SDMCFinetunedTrainer model.

Reported: seconds per training iteration (first and second; the first includes the loader's start
and, for SDMC, the latent scale factor), read off each command's own progress bar as its lines
arrive; the fold validation's and the prediction's seconds per slice, from the arrival of the
console lines that open and close them; the peak resident memory of each command and its worker
processes (`os.wait4`, as `run_all.py` takes RUSAGE_CHILDREN); the planner's memory estimate for
SDMC at the planned batch; and the checkpoint files of each fold (`checkpoint_latest` is caught
while it exists: training deletes it when it ends).

Takes about 13 minutes on 2 cores (measured: 12.7; an sd iteration at batch 1 takes 18 s for SDMC
and 40 s for the mask autoencoder, a validation slice 10 s), up to 17 GB of disk in a temporary
folder and 9.5 GB of memory.

    python benchmarks/bench_published_cpu.py [--patients 10] [--predict-slices 3]
"""

import argparse
import bisect
import itertools
import json
import os
import platform
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release
from sdmcunet.dataset_conversion.synthetic import make_synthetic_dataset
from sdmcunet.experiment_planning.plans import SDMC_FAMILY, load_plans
from sdmcunet.networks.sdmc import MASK_AUTOENCODER
from sdmcunet.results import layout
from sdmcunet.results.splits import load_splits

from _published import (
    edit_plans, estimated_gigabytes, folder_bytes, planned_configuration, write_standin_checkpoints,
)
from _synthetic import DATASET

TRAINERS = ("MaskAutoencoderTrainer", "SDMCFinetunedTrainer", "SDMCPretrainedTrainer", "UNetTrainer")
GPU_MEMORY_TARGET_GB = 80
ITERATIONS = 2
SLICE_SIZE = 512  # the release's slices
WATCH_SECONDS = 0.1  # how often the fold folder is looked at for checkpoint_latest
MIB = 2**20
EPOCH_BAR = re.compile(r"^epoch \d+:.*\|\s*(\d+)/\d+ \[")
PREDICTION_BAR = re.compile(r"^predicting:.*\|\s*(\d+)/\d+ \[")


@dataclass
class CommandRun:
    seconds: float
    peak_rss_mib: float  # the largest process: the command or a worker it started
    lines: list[tuple[float, str]]  # console lines (progress bar updates included) and their arrival, in s
    watched_bytes: int | None  # the size a watched file had while it existed

    def arrival(self, pattern: str) -> float:
        return next(seconds for seconds, line in self.lines if re.search(pattern, line))

    def bar_times(self, bar: re.Pattern) -> list[float]:
        """When a progress bar first showed each count 0, 1, 2, ...: count k arrives as step k ends."""
        first: dict[int, float] = {}
        for seconds, line in self.lines:
            if match := bar.search(line):
                first.setdefault(int(match.group(1)), seconds)
        return [first[count] for count in sorted(first)]


def run_command(command: str, *arguments: str, environment: dict, watch: Path | None = None) -> CommandRun:
    """Run one of the package's commands, recording when each console line arrives."""
    # unbuffered output and every progress bar update: a line's arrival is when it happened
    environment = os.environ | environment | {"PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "0"}
    start = time.perf_counter()
    process = subprocess.Popen([str(Path(sys.executable).parent / command), *arguments], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks, watched = [], None
    while True:
        ready, _, _ = select.select([process.stdout], [], [], WATCH_SECONDS)
        if watch is not None:
            watched = _size_if_there(watch) or watched
        if not ready:
            continue
        chunk = os.read(process.stdout.fileno(), 1 << 16)
        if not chunk:
            break
        chunks.append((time.perf_counter() - start, chunk))
    _, status, usage = os.wait4(process.pid, 0)  # the command's rusage covers the workers it waited for
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = _lines(chunks)
    if process.returncode:
        tail = "\n".join(line for _, line in lines[-30:])
        raise SystemExit(f"{command} {' '.join(arguments)} failed (exit {process.returncode}):\n{tail}")
    return CommandRun(time.perf_counter() - start, usage.ru_maxrss / 1024, lines, watched)


def _lines(chunks: list[tuple[float, bytes]]) -> list[tuple[float, str]]:
    """The output's lines (a progress bar update is one, ended by the next's carriage return), each with the
    arrival of its first byte: when it was written."""
    starts = list(itertools.accumulate((len(chunk) for _, chunk in chunks), initial=0))
    output = b"".join(chunk for _, chunk in chunks)
    return [(chunks[bisect.bisect_right(starts, line.start()) - 1][0], line.group().decode(errors="replace").strip())
            for line in re.finditer(rb"[^\r\n]+", output) if line.group().strip()]


def _size_if_there(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def make_dataset(folder: Path, n_patients: int) -> dict:
    """The synthetic release converted into the raw dataset; the four folders as environment variables."""
    environment = {name: str(folder / name) for name in ("SDMC_raw", "SDMC_preprocessed", "SDMC_results",
                                                         "SDMC_weights")}
    os.environ.update(environment)  # the in-process steps read them too
    make_synthetic_dataset(folder / "release", n_patients=n_patients, seed=1, size=SLICE_SIZE, progress=False)
    convert_release(folder / "release", 2021, Path(environment["SDMC_raw"]))
    return environment


def shortest_fold(preprocessed: Path) -> tuple[int, list[str]]:
    """The fold with the fewest validation slices among those whose validation shows a lesion (the mask
    autoencoder is validated on lesion slices only), and those slices."""
    splits = load_splits(preprocessed)

    def shows_lesion(case: str) -> bool:
        return bool(json.loads((preprocessed / "sdmcPlans_2d" / f"{case}.json").read_text())["class_locations"])

    with_lesions = [index for index, split in enumerate(splits) if any(map(shows_lesion, split["val"]))]
    fold = min(with_lesions, key=lambda index: len(splits[index]["val"]))
    return fold, splits[fold]["val"]


def plan(environment: dict, preprocessed: Path) -> dict:
    planning = run_command("sdmc_plan_and_preprocess", "-d", "2021", "-gpu_memory_target", str(GPU_MEMORY_TARGET_GB),
                           "-np", str(os.cpu_count() or 1), environment=environment)
    plans = load_plans(preprocessed / "sdmcPlans.json")
    config = planned_configuration(plans)
    batches = {name: config.family(name).batch_size for name in config.families}
    return {"command_seconds": round(planning.seconds, 1), "peak_rss_mib": round(planning.peak_rss_mib),
            "gpu_memory_target_gb": GPU_MEMORY_TARGET_GB, "image_size": list(config.image_size),
            "sdmc_size_preset": config.family(SDMC_FAMILY).size_preset, "planned_batch_sizes": batches,
            "sdmc_memory_estimate_gb_at_planned_batch": round(
                estimated_gigabytes(plans, SDMC_FAMILY, batches[SDMC_FAMILY]), 2),
            "sdmc_memory_estimate_gb_at_batch_1": round(estimated_gigabytes(plans, SDMC_FAMILY, 1), 2)}


def convert_weights(folder: Path, environment: dict) -> dict:
    start = time.perf_counter()
    standins = write_standin_checkpoints(folder)
    record = {"standin_checkpoints_seconds": round(time.perf_counter() - start, 1)}
    for standin in standins:
        output = Path(environment["SDMC_weights"]) / standin.name
        conversion = run_command("sdmc_convert_weights", "-i", str(standin.checkpoint), "-o", str(output),
                                 "--kind", standin.kind, environment=environment)
        record[f"convert_{standin.kind}"] = {"command_seconds": round(conversion.seconds, 1),
                                             "peak_rss_mib": round(conversion.peak_rss_mib),
                                             "checkpoint_mib": round(folder_bytes(standin.checkpoint) / MIB),
                                             "converted_folder_mib": round(folder_bytes(output) / MIB)}
        standin.checkpoint.unlink()
    return record


def train(trainer: str, fold: int, environment: dict) -> dict:
    """Two iterations of `trainer`, then the fold's validation; times, memory and checkpoint sizes."""
    model_folder = Path(environment["SDMC_results"]) / DATASET / layout.model_folder_name(trainer, "sdmcPlans", "2d")
    fold_folder = layout.fold_folder(model_folder, fold)
    training = run_command("sdmc_train", "2021", "2d", str(fold), "-tr", trainer, "--epochs", "1",
                           "--iterations_per_epoch", str(ITERATIONS), environment=environment,
                           watch=fold_folder / layout.checkpoint_file("latest"))
    steps = training.bar_times(EPOCH_BAR)
    iterations = [round(end - begin, 2) for begin, end in zip(steps, steps[1:])]
    training_ends = training.arrival("training finished after")
    validation_ends = training.arrival(rf"^fold {fold} of ")  # run_training's last line, after the validation
    summary = layout.validation_folder(fold_folder) / layout.SUMMARY_FILE
    scored = len(json.loads(summary.read_text())["metric_per_case"])
    checkpoints = {f"checkpoint_{kind}": folder_bytes(fold_folder / layout.checkpoint_file(kind))
                   for kind in ("best", "final")}
    checkpoints["checkpoint_latest_while_training"] = training.watched_bytes
    if (fold_folder / MASK_AUTOENCODER).is_dir():  # the frozen part, saved once per fold
        checkpoints["mask_autoencoder_folder"] = folder_bytes(fold_folder / MASK_AUTOENCODER)
    return {
        "iteration_seconds": iterations, "seconds_per_iteration": iterations[-1],
        "epoch_validation_seconds": round(training.arrival(r"epoch 1: train loss") - steps[-1], 1),
        "validation_slices": scored,
        "validation_seconds_per_slice": round((validation_ends - training_ends) / scored, 2),
        "command_seconds": round(training.seconds, 1), "peak_rss_mib": round(training.peak_rss_mib),
        "checkpoints_mib": {name: None if size is None else round(size / MIB, 1) for name, size in checkpoints.items()},
        "fold_folder_after_training_mib": round(folder_bytes(fold_folder) / MIB, 1),
    }


def predict(folder: Path, cases: list[str], fold: int, environment: dict) -> dict:
    """`sdmc_predict` of `cases` from their release files (PNG and DICOM sharing a stem)."""
    slices = folder / "slices"
    slices.mkdir()
    for case in cases:
        for kind, ending in (("PNG", "png"), ("DICOM", "dcm")):
            for path in (folder / "release").glob(f"Training/*/{kind}/{case}.{ending}"):
                shutil.copy(path, slices / path.name)
    prediction = run_command("sdmc_predict", "-i", str(slices), "-o", str(folder / "predicted"), "-d", "2021",
                             "-tr", "SDMCFinetunedTrainer", "-f", str(fold), environment=environment)
    counts = prediction.bar_times(PREDICTION_BAR)
    return {"slices": len(cases), "first_slice_seconds": round(counts[1] - counts[0], 2),
            "seconds_per_slice_after_the_first": round((counts[-1] - counts[1]) / max(1, len(counts) - 2), 2),
            "command_seconds": round(prediction.seconds, 1), "peak_rss_mib": round(prediction.peak_rss_mib)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--predict-slices", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        environment = make_dataset(folder, args.patients)
        preprocessed = Path(environment["SDMC_preprocessed"]) / DATASET
        results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
                              f"torch {torch.__version__}"}
        results["plan"] = plan(environment, preprocessed)
        results["weights"] = convert_weights(folder, environment)
        edit_plans(preprocessed / "sdmcPlans.json", batch_size=1, val_iterations=1)
        fold, validation_cases = shortest_fold(preprocessed)
        slices = len(list((preprocessed / "sdmcPlans_2d").glob("*.json")))
        results["dataset"] = {"patients": args.patients, "slices": slices, "fold": fold,
                              "validation_slices": len(validation_cases), "batch_size_trained": 1}
        results["training"] = {}
        for trainer in TRAINERS:
            print(f"[bench_published_cpu] {trainer}", file=sys.stderr, flush=True)
            results["training"][trainer] = train(trainer, fold, environment)
        results["prediction"] = predict(folder, validation_cases[:args.predict_slices], fold, environment)
    results["total_minutes"] = round((time.perf_counter() - started) / 60, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
