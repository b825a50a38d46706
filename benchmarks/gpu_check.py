"""The published configuration on one CUDA GPU: memory, speed, one step against DDIM, torchrun; as JSON.

Each figure is reported under `goals` with its measured value, what it is measured against, and
pass or fail:

1. `SDMCFinetunedTrainer` of the "sd" plan at the planned batch, 100 iterations with bf16 autocast
   and 100 with fp16 autocast and the GradScaler (the plans' `schedule.amp_dtype`): peak GPU memory
   (`max_memory_reserved`; allocated is reported too) against the planner's estimate (goal: within
   15%), and seconds per iteration in training (loader included) against a bare PyTorch loop on
   the same SDMCSeg and batch size (AdamW, autocast, scaler, EMA update; goal: at most 1.10x).
   `train_step` on the bare loop's batch, in alternating rounds, is reported beside it;
2. single-step segmentation (`SDMCSeg.segment`) against LDM's 50-step DDIM (`segment_multistep`,
   eta 1), with the EMA denoiser under the trainer's autocast: latency per slice at batch 1 and
   throughput at batch 32 (goal: DDIM at least 30x slower per slice);
3. `UNetTrainer` on the GPU plan at its planned batch: peak memory against the estimate, and
   seconds per iteration;
4. `torchrun --standalone --nproc_per_node 1 -m sdmcunet.training.run_training` (as
   `python -m torch.distributed.run`) training `MaskAutoencoderTrainer` to its end, final
   validation included: that trainer's validation writes JSON only.

Data: 10 phantom patients (`sdmcunet.dataset_conversion.phantom`) written straight into the
preprocessed layout, planned by `plan_experiment` for 90% of the GPU's memory (what
`sdmc_plan_and_preprocess` plans when it finds a GPU); stand-in pretrained weights in the CompVis
layouts (`_published.py`) converted by `sdmc_convert_weights`' own function; the fine-tuned variant
takes the converted VAE as its mask autoencoder (`-mask_autoencoder`). The GPU machine has neither
SimpleITK nor pydicom: nothing here reads or writes NIfTI or DICOM, and the trainings run through
the Python API, which stops before the final validation that writes NIfTI.

Estimated at 4 to 6 minutes on one H200 (budget: 8; not yet run on a GPU), with up to 11 GB of
checkpoints on disk at a time. `--tiny` runs the same code on the CPU in 1.5 minutes on 2 idle cores
(the "tiny" SDMC sizes, the CPU plan's U-Net, 128 x 128 slices, 3 iterations, throughput at batch
4; float32, since the trainers autocast on CUDA only; no GPU memory figures): it shows that the
check runs before a GPU is at hand, and its speed ratios mean nothing.

On the GPU machine, with the wheels of `benchmarks/gpu_wheels.sh` in `.whl` (ignored by git: name it
in the device tool's `carry`):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json
"""

import argparse
import copy
import functools
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sdmcunet import paths
from sdmcunet.dataset_conversion.phantom import draw_patient, render_slice
from sdmcunet.experiment_planning import presets
from sdmcunet.experiment_planning.fingerprint import FINGERPRINT_FILE, intensity_statistics
from sdmcunet.experiment_planning.plan_and_preprocess import gpu_memory_target, plan_experiment
from sdmcunet.experiment_planning.plans import (
    BASELINE_FAMILY, MASK_AUTOENCODER_FAMILY, SDMC_FAMILY, save_plans, validate_plans,
)
from sdmcunet.experiment_planning.splits import SPLITS_FILE, make_splits
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC
from sdmcunet.preprocessing.geometry import label_to_network
from sdmcunet.preprocessing.preprocessor import _class_locations, preprocess_image
from sdmcunet.preprocessing.preprocessed_cases import PreprocessedCases
from sdmcunet.results import layout
from sdmcunet.training.trainers import TRAINERS
from sdmcunet.training.trainers.base import Trainer
from sdmcunet.utils.cli import configure_logging
from sdmcunet.utils.files import atomic_write_json
from sdmcunet.weights.convert import convert_checkpoint

from _published import (
    CONFIGURATION, UNET_NAME, VAE_NAME, edit_plans, estimated_gigabytes, planned_configuration, write_standin_checkpoints,
)

DATASET_ID, DATASET = 2021, "Dataset2021_Stroke2021"
DATASET_JSON = {"channel_names": {"0": "PNG"}, "labels": {"background": 0, "ischemic": 1, "hemorrhagic": 2},
                "file_ending": ".nii.gz", "name": "Stroke2021"}
CHANNEL_NAMES = {0: "PNG"}
NUM_CLASSES = 3
PATIENTS, SEED, FOLD = 10, 1, 0
LESIONS = ((), (ISCHEMIC,), (HEMORRHAGIC,), (ISCHEMIC, HEMORRHAGIC))  # patient i shows LESIONS[i % 4]
VALIDATION_BATCHES = 2  # per epoch
TINY_GPU_MEMORY_TARGET_GB = 80  # --tiny: no GPU memory to take 90% of
DDIM_STEPS = 50
MEMORY_TOLERANCE, OVERHEAD_LIMIT, DDIM_SPEEDUP_GOAL = 0.15, 1.10, 30.0


@dataclass(frozen=True)
class Scale:
    """How much the check does: the published sizes on a GPU, or a CPU-sized rehearsal of the same code."""

    sdmc_size: str
    slice_size: int  # pixels
    iterations: int  # per training
    rounds: int  # alternating rounds of train_step and the bare loop
    steps_per_round: int
    latency_repeats: int
    ddim_repeats: int
    throughput_batch: int
    torchrun_iterations: int


GPU_SCALE = Scale("sd", 256, 100, 3, 10, 20, 3, 32, 5)
TINY_SCALE = Scale("tiny", 128, 3, 2, 2, 2, 1, 4, 2)


@dataclass
class PhantomSlice:
    patient: str
    grey: np.ndarray  # the organisers' PNG: the brain window as 0..255
    labels: np.ndarray


# ------------------------------------------------------------------------------------------- data and plans

def phantom_slices(size: int) -> dict[str, PhantomSlice]:
    slices = {}
    for index in range(PATIENTS):
        patient = draw_patient(SEED, index, size, LESIONS[index % len(LESIONS)], dense_focus=False)
        for number in range(patient.n_slices):
            phantom = render_slice(patient, number)
            grey = np.clip(phantom.hounsfield / 80.0, 0, 1) * 255  # brain window: level 40, width 80 HU
            slices[f"{index:02d}{number:02d}"] = PhantomSlice(str(index), grey.astype(np.float32), phantom.label_map)
    return slices


def write_planning_inputs(slices: dict[str, PhantomSlice]) -> Path:
    """What planning and training read besides images: dataset.json, the fingerprint, splits by patient."""
    raw, preprocessed = paths.raw_root() / DATASET, paths.preprocessed_root() / DATASET
    raw.mkdir(parents=True)
    preprocessed.mkdir(parents=True)
    atomic_write_json(raw / "dataset.json", DATASET_JSON | {"numTraining": len(slices)})
    classes = {case: sorted(int(label) for label in np.unique(item.labels)) for case, item in slices.items()}
    lesion_grey = np.concatenate([item.grey[item.labels > 0] for item in slices.values()])
    atomic_write_json(preprocessed / FINGERPRINT_FILE, {
        "cases": list(slices), "median_shape": np.median([item.labels.shape for item in slices.values()], 0).tolist(),
        "channel_names": DATASET_JSON["channel_names"], "classes_per_case": list(classes.values()),
        "foreground_intensity_properties_per_channel": {"0": intensity_statistics(lesion_grey)},
    })
    atomic_write_json(preprocessed / SPLITS_FILE, make_splits({case: item.patient for case, item in slices.items()},
                                                              classes))
    return preprocessed


def with_tiny_networks(plans: dict) -> dict:
    """--tiny: the "tiny" SDMC sizes, loading stand-ins by the published names, and the CPU plan's U-Net."""
    config = plans["configurations"][CONFIGURATION]
    families = presets.with_sdmc_size(config["families"], "tiny")
    for family in (SDMC_FAMILY, MASK_AUTOENCODER_FAMILY):
        families[family]["networks"]["autoencoder"]["pretrained"] = VAE_NAME
    families[SDMC_FAMILY]["networks"]["denoiser"]["pretrained"] = UNET_NAME
    families[BASELINE_FAMILY]["networks"] = presets.cpu_families()[BASELINE_FAMILY]["networks"]
    config["families"] = families
    return plans


def write_preprocessed(slices: dict[str, PhantomSlice], plans: dict, preprocessed: Path) -> None:
    """The arrays and properties `sdmc_preprocess` writes, made from the phantoms in memory."""
    config = planned_configuration(plans)
    folder = preprocessed / config.data_identifier
    folder.mkdir()
    for seed, (case, item) in enumerate(slices.items()):
        inputs, geometry = preprocess_image(item.grey[None], config, CHANNEL_NAMES, case)
        labels = label_to_network(item.labels.astype(np.int64), geometry, NUM_CLASSES)
        np.save(folder / f"{case}.npy", inputs.astype(np.float16))
        np.save(folder / f"{case}_seg.npy", labels)
        atomic_write_json(folder / f"{case}.json", {
            "geometry": geometry.to_json(), "classes": sorted(int(label) for label in np.unique(item.labels)),
            "class_locations": _class_locations(labels, NUM_CLASSES, seed)})


def planned_dataset(scale: Scale, tiny: bool) -> tuple[Path, dict, float]:
    """Preprocessed phantoms and their GPU plans; the memory target planned for."""
    slices = phantom_slices(scale.slice_size)
    preprocessed = write_planning_inputs(slices)
    target = gpu_memory_target(None, force_cpu=False) or TINY_GPU_MEMORY_TARGET_GB
    plans = edit_plans(plan_experiment(DATASET_ID, gpu_memory_gb=target), val_iterations=VALIDATION_BATCHES)
    if tiny:
        plans = with_tiny_networks(plans)
        save_plans(plans, preprocessed / f"{plans['plans_name']}.json")  # torchrun's training reads the file
    write_preprocessed(slices, plans, preprocessed)
    return preprocessed, plans, target


def convert_standins(folder: Path, size_preset: str) -> None:
    for standin in write_standin_checkpoints(folder, size_preset):
        convert_checkpoint(standin.checkpoint, paths.weights_root() / standin.name, standin.kind, size=size_preset)
        standin.checkpoint.unlink()


# ------------------------------------------------------------------------------------------- training

def free_gpu_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_gb() -> dict | None:
    if not torch.cuda.is_available():
        return None
    return {"allocated": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "reserved": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def clock_steps(trainer: Trainer) -> list[float]:
    """When each optimiser step is queued. Consecutive ones are one iteration apart: every train_step
    ends by reading its loss, which waits for the GPU."""
    times: list[float] = []
    after_step = trainer.after_step

    def clocked() -> None:
        after_step()
        times.append(time.perf_counter())

    trainer.after_step = clocked
    return times


def steady_seconds(times: list[float]) -> float:
    """Median iteration, the first tenth (at least one: cuDNN's choices, the loader's start) left out."""
    gaps = np.diff(times)
    return float(np.median(gaps[max(1, len(gaps) // 10):]))


def loader_workers() -> int:
    return min(8, max(1, (os.cpu_count() or 1) - 1))  # sdmc_train's default


def train(name: str, plans: dict, preprocessed: Path, iterations: int, options: dict | None = None) -> dict:
    """`iterations` of `name` (one epoch, its validation batches and checkpoints, no final validation);
    the trainer, its steady iteration time and the peak GPU memory."""
    free_gpu_memory()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = TRAINERS.get(name)(plans, CONFIGURATION, FOLD, preprocessed, device, epochs=1,
                                 iterations_per_epoch=iterations, num_loader_workers=loader_workers(), options=options)
    steps = clock_steps(trainer)
    start = time.perf_counter()
    trainer.run_training()
    return {"trainer": trainer, "seconds": time.perf_counter() - start, "iteration": steady_seconds(steps),
            "peak_gb": gpu_peak_gb()}


def with_amp_dtype(plans: dict, dtype: str) -> dict:
    plans = copy.deepcopy(plans)
    plans["configurations"][CONFIGURATION]["families"][SDMC_FAMILY]["schedule"]["amp_dtype"] = dtype
    validate_plans(plans, Path(f"<plans with amp_dtype {dtype}>"))
    return plans


def bare_loop(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One step of the same SDMCSeg as plain PyTorch: AdamW, autocast, scaler, clipping, EMA."""
    model, schedule, cuda = trainer.module, trainer.schedule, trainer.device.type == "cuda"
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=schedule.learning_rate, weight_decay=schedule.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and trainer.amp_dtype == torch.float16)
    ema = AveragedModel(model.denoiser, multi_avg_fn=get_ema_multi_avg_fn(schedule.ema_decay), use_buffers=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=cuda):
            loss = model(images, labels)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(trainable, schedule.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        ema.update_parameters(model.denoiser)

    return step


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    call()  # warm-up
    synchronise(device)
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    synchronise(device)
    return (time.perf_counter() - start) / repeats


def one_batch(trainer: Trainer) -> dict:
    """A training batch made in this process, on the trainer's device."""
    train_cases, _ = trainer.split()
    cases = PreprocessedCases(trainer.preprocessed_folder / trainer.configuration.data_identifier,
                              trainer.training_case_ids(train_cases))
    trainer.num_loader_workers = 0
    batch = next(trainer._training_batches(cases))
    return {key: value.to(trainer.device) if torch.is_tensor(value) else value for key, value in batch.items()}


def step_comparison(trainer: Trainer, scale: Scale) -> dict:
    """train_step and the bare loop on one batch, in alternating rounds (a slow spell then hits both)."""
    trainer.network.train()  # training ends with a validation, in eval mode
    batch = one_batch(trainer)
    bare = bare_loop(trainer, batch["data"], batch["seg"][:, 0])
    rounds = [(seconds_per_call(lambda: trainer.train_step(batch), scale.steps_per_round, trainer.device),
               seconds_per_call(bare, scale.steps_per_round, trainer.device)) for _ in range(scale.rounds)]
    trainer_rounds, bare_rounds = zip(*rounds)
    return {"train_step": statistics.median(trainer_rounds), "bare_loop": statistics.median(bare_rounds)}


@torch.no_grad()
def segmentation_speed(trainer: Trainer, scale: Scale) -> dict:
    """Seconds per call of one step and of 50-step DDIM at batch 1 and at the throughput batch, under the
    trainer's autocast, as inference runs them."""
    model, denoiser, diffusion = trainer.module.eval(), trainer.ema.module, trainer.family_settings.diffusion
    _, val_cases = trainer.split()
    cases = PreprocessedCases(trainer.preprocessed_folder / trainer.configuration.data_identifier, val_cases)
    images = np.stack([cases.image(val_cases[index % len(val_cases)]) for index in range(scale.throughput_batch)])
    images = torch.from_numpy(images.astype(np.float32)).to(trainer.device)
    timings = {}
    with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.device.type == "cuda"):
        for batch_name, batch in (("batch_1", images[:1]), (f"batch_{scale.throughput_batch}", images)):
            single = seconds_per_call(lambda: model.segment(batch, denoiser=denoiser), scale.latency_repeats,
                                      trainer.device)
            ddim = seconds_per_call(
                lambda: model.segment_multistep(batch, DDIM_STEPS, diffusion, eta=1.0, denoiser=denoiser),
                scale.ddim_repeats, trainer.device)
            timings[batch_name] = {"single_step": round(single, 5), "ddim50": round(ddim, 5)}
    return timings


def discard(trainer: Trainer) -> None:
    """The trainer's checkpoints (gigabytes each for the sd networks) and its GPU memory."""
    shutil.rmtree(trainer.model_folder, ignore_errors=True)
    del trainer
    free_gpu_memory()


def torchrun_training(scale: Scale) -> dict:
    """A whole `sdmc_train` under torchrun, one process: MaskAutoencoderTrainer, final validation included."""
    arguments = ["--standalone", "--nproc_per_node", "1", "-m", "sdmcunet.training.run_training", str(DATASET_ID),
                 CONFIGURATION, str(FOLD), "-tr", "MaskAutoencoderTrainer", "--epochs", "1",
                 "--iterations_per_epoch", str(scale.torchrun_iterations), "-num_loader_workers", str(loader_workers())]
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", *arguments], capture_output=True,
                               text=True)
    fold = layout.fold_folder(layout.model_folder(DATASET, "MaskAutoencoderTrainer", "sdmcPlans", CONFIGURATION), FOLD)
    finished = completed.returncode == 0 and all(
        path.is_file() for path in (fold / layout.FINAL_CHECKPOINT, layout.validation_folder(fold) / layout.SUMMARY_FILE))
    record = {"command": "torchrun " + " ".join(arguments), "seconds": round(time.perf_counter() - start, 1),
              "exit_code": completed.returncode, "finished": finished}
    if not finished:
        record["output_tail"] = (completed.stdout + completed.stderr)[-3000:]
    return record


# ------------------------------------------------------------------------------------------- goals

def goal(measured: float | None, reference: float | None, target: str, passed: bool | None) -> dict:
    ratio = round(measured / reference, 3) if measured is not None and reference else None
    return {"measured": None if measured is None else round(measured, 4),
            "reference": None if reference is None else round(reference, 4), "ratio": ratio, "goal": target,
            "pass": passed}


def memory_goal(peak_gb: dict | None, estimate_gb: float) -> dict:
    if peak_gb is None:
        return goal(None, estimate_gb, "peak reserved within 15% of the planner's estimate", None)
    ratio = peak_gb["reserved"] / estimate_gb
    return goal(peak_gb["reserved"], estimate_gb, "peak reserved within 15% of the planner's estimate",
                abs(ratio - 1) <= MEMORY_TOLERANCE)


def overhead_goal(trainer_seconds: float, bare_seconds: float) -> dict:
    return goal(trainer_seconds, bare_seconds, f"trainer s/iteration <= {OVERHEAD_LIMIT}x the bare loop's",
                trainer_seconds <= OVERHEAD_LIMIT * bare_seconds)


def speedup_goal(single_seconds: float, ddim_seconds: float, what: str) -> dict:
    return goal(ddim_seconds, single_seconds, f"50-step DDIM >= {DDIM_SPEEDUP_GOAL:.0f}x one step ({what})",
                ddim_seconds >= DDIM_SPEEDUP_GOAL * single_seconds)


# ------------------------------------------------------------------------------------------- the check

def sdmc_check(dtype: str, plans: dict, preprocessed: Path, scale: Scale, report: dict) -> None:
    """The fine-tuned SDMC trainer with one AMP precision; after float16 (inference's), the inference speed."""
    batch = planned_configuration(plans).family(SDMC_FAMILY).batch_size
    estimate = estimated_gigabytes(plans, SDMC_FAMILY, batch)
    run = train("SDMCFinetunedTrainer", with_amp_dtype(plans, dtype), preprocessed, scale.iterations,
                {"mask_autoencoder": paths.weights_root() / VAE_NAME})
    steps = step_comparison(run["trainer"], scale)
    report["sdmc"][dtype] = {"batch_size": batch, "iterations": scale.iterations,
                             "training_seconds": round(run["seconds"], 1), "peak_gpu_memory_gb": run["peak_gb"],
                             "planner_estimate_gb": round(estimate, 2),
                             "seconds_per_iteration_in_training": round(run["iteration"], 4),
                             "train_step_seconds_same_batch": round(steps["train_step"], 4),
                             "bare_loop_seconds": round(steps["bare_loop"], 4)}
    report["goals"][f"sdmc_{dtype}_peak_memory"] = memory_goal(run["peak_gb"], estimate)
    report["goals"][f"sdmc_{dtype}_trainer_overhead"] = overhead_goal(run["iteration"], steps["bare_loop"])
    if dtype == "float16":
        segmentation_check(run["trainer"], scale, report)
    discard(run.pop("trainer"))


def segmentation_check(trainer: Trainer, scale: Scale, report: dict) -> None:
    speed = segmentation_speed(trainer, scale)
    report["segmentation_seconds_per_call"] = speed
    for batch_name, what in (("batch_1", "latency, batch 1"),
                             (f"batch_{scale.throughput_batch}", f"throughput, batch {scale.throughput_batch}")):
        report["goals"][f"single_step_vs_ddim50_{batch_name}"] = speedup_goal(
            speed[batch_name]["single_step"], speed[batch_name]["ddim50"], what)


def unet_check(plans: dict, preprocessed: Path, scale: Scale, report: dict) -> None:
    batch = planned_configuration(plans).family(BASELINE_FAMILY).batch_size
    run = train("UNetTrainer", plans, preprocessed, scale.iterations)
    estimate = estimated_gigabytes(plans, BASELINE_FAMILY, batch, network="UNet")
    report["unet"] = {"batch_size": batch, "iterations": scale.iterations, "training_seconds": round(run["seconds"], 1),
                      "peak_gpu_memory_gb": run["peak_gb"], "planner_estimate_gb": round(estimate, 2),
                      "seconds_per_iteration_in_training": round(run["iteration"], 4)}
    report["goals"]["unet_peak_memory"] = memory_goal(run["peak_gb"], estimate)
    discard(run.pop("trainer"))


def torchrun_check(scale: Scale, report: dict) -> None:
    report["torchrun"] = torchrun_training(scale)
    report["goals"]["torchrun_one_process_training_finishes"] = goal(
        None, None, "exit 0, checkpoint_final and validation/summary.json written", report["torchrun"]["finished"])


def run_guarded(name: str, check: Callable[[], None], report: dict) -> None:
    """A failing check is recorded and the others still run: the GPU machine's time is too short to
    lose the whole report to one error."""
    try:
        check()
    except Exception:  # noqa: BLE001 - any failure, reported with its traceback
        report["errors"][name] = traceback.format_exc()[-3000:]
        print(report["errors"][name], file=sys.stderr)
    free_gpu_memory()  # out here: the exception held the failed check's frames, and their tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the same code on the CPU at tiny sizes (1.5 minutes)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA GPU: run with --tiny to rehearse the check on the CPU")
    configure_logging()
    scale = TINY_SCALE if args.tiny else GPU_SCALE
    started = time.perf_counter()
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for variable in ("SDMC_raw", "SDMC_preprocessed", "SDMC_results", "SDMC_weights"):
            os.environ[variable] = str(folder / variable)
        preprocessed, plans, target = planned_dataset(scale, args.tiny)
        convert_standins(folder, scale.sdmc_size)
        stages["data_plans_weights"] = time.perf_counter() - started
        config = planned_configuration(plans)
        report = {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (--tiny rehearsal)",
            "torch": torch.__version__, "scale": "tiny" if args.tiny else "published",
            "plan": {"gpu_memory_target_gb": target, "image_size": list(config.image_size),
                     "sdmc_size_preset": config.family(SDMC_FAMILY).size_preset,
                     "batch_sizes": {name: config.family(name).batch_size for name in config.families}},
            "goals": {}, "sdmc": {}, "errors": {},
        }
        checks = {f"sdmc_{dtype}": functools.partial(sdmc_check, dtype, plans, preprocessed, scale, report)
                  for dtype in ("bfloat16", "float16")}
        checks["unet"] = functools.partial(unet_check, plans, preprocessed, scale, report)
        checks["torchrun"] = functools.partial(torchrun_check, scale, report)
        for name, check in checks.items():
            run_guarded(name, check, report)
            stages[name] = time.perf_counter() - started - sum(stages.values())
    report["stage_seconds"] = {name: round(seconds, 1) for name, seconds in stages.items()}
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
