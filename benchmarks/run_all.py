"""Every benchmark in one run, and one performance table.

Runs each benchmark script in its own process, records its JSON output, wall time and peak
memory (the resident set of the largest process of the stage: the benchmark or one of the
trainings or workers it starts), and writes

- `benchmarks/results/{stage}.json`: each stage's raw output (kept, so that a stage can be
  re-run alone with `--stages` and the table rebuilt from the others);
- `benchmarks/results.json` and `benchmarks/results.md`: per stage, the figure, the peer it is
  measured against in the same run, their ratio, the target and the peak memory.

    python benchmarks/run_all.py                          # everything (about 2.5 hours on 2 cores)
    python benchmarks/run_all.py --stages inference       # one stage again, table rebuilt
    python benchmarks/run_all.py --training-minutes 2 --sdmc-minutes 3   # shorter quality runs
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RAW_RESULTS = HERE / "results"
# The benchmark runs as the child of this wrapper, so RUSAGE_CHILDREN covers it and everything it
# starts (ru_maxrss: the largest resident set of any of them, in KiB on Linux).
PEAK_MEMORY_WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.call([sys.executable, *sys.argv[1:]]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=open(sys.argv[1] + '.peak', 'w')); "
    "sys.exit(code)"
)


@dataclass
class Row:
    stage: str
    figure: str
    value: float | None
    peer: str
    peer_value: float | None
    ratio: float | None  # value / peer_value
    target: str
    met: bool | None
    peak_memory_mib: float | None


def stage_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    return {
        "conversion": ["bench_conversion.py"],
        "preprocess": ["bench_preprocess.py"],
        "training": ["bench_training.py", "--minutes", str(args.training_minutes)],
        "sdmc": ["bench_sdmc.py", "--minutes", str(args.sdmc_minutes)],
        "inference": ["bench_inference.py"],
    }


def run_stage(name: str, command: list[str]) -> dict:
    """Run one benchmark; its JSON output with the wall time and peak memory, saved under results/."""
    script = HERE / command[0]
    peak_file = Path(f"{script}.peak")
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", PEAK_MEMORY_WRAPPER, str(script), *command[1:]], cwd=HERE,
                               capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{command[0]} failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    record = {"command": " ".join(["python", f"benchmarks/{command[0]}", *command[1:]]),
              "wall_seconds": round(seconds, 1), "peak_memory_mib": round(int(peak_file.read_text()) / 1024, 1),
              "output": _final_json(completed.stdout)}
    peak_file.unlink()
    RAW_RESULTS.mkdir(exist_ok=True)
    (RAW_RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _final_json(output: str) -> dict:
    """The JSON object a benchmark prints last (progress lines may come before it)."""
    start = 0 if output.startswith("{") else output.index("\n{") + 1
    return json.loads(output[start:])


def _row(stage: str, record: dict, figure: str, value, peer: str, peer_value, target: str,
         met: bool | None) -> Row:
    ratio = round(value / peer_value, 3) if value is not None and peer_value else None
    return Row(stage, figure, value, peer, peer_value, ratio, target, met, record["peak_memory_mib"])


def rows_of(stage: str, record: dict) -> list[Row]:
    """The table rows of one stage's benchmark output."""
    out = record["output"]
    if stage == "conversion":
        return [_row(stage, record, "conversion slices/s (2 processes)", out.get("conversion_slices_per_second_np2"),
                     "1 process", out["conversion_slices_per_second_np1"], "scales with processes", None)]
    if stage == "preprocess":
        nnunet = out.get("nnunetv2_plan_and_preprocess_2d_seconds")
        return [_row(stage, record, "sdmc_plan_and_preprocess s", out["sdmc_plan_and_preprocess_seconds"],
                     "nnUNetv2_plan_and_preprocess -c 2d s", nnunet, "ratio <= 0.5",
                     None if nnunet is None else out["ratio_sdmc_to_nnunet"] <= 0.5)]
    if stage == "training":
        steps = out["training_steps_per_second"]
        return [
            _row(stage, record, "loader augmented batches/s", out["loader_augmented_batches_per_second"],
                 "training steps/s", steps, "loader >= steps", not out["loader_is_bottleneck"]),
            _row(stage, record, "trainer step s", out["trainer_step_seconds"], "bare PyTorch loop step s",
                 out["bare_loop_step_seconds"], "overhead <= 10%", out["trainer_overhead"] <= 0.10),
            _row(stage, record, f"UNet validation mean Dice (IS, HS) after {out['unet_epochs']} epochs, "
                 f"{_folds_and_interval(out)}",
                 round(out["unet_validation_dice"]["Mean"], 3), "-", None, ">= 0.7",
                 out["unet_validation_dice"]["Mean"] >= 0.7),
        ]
    if stage == "sdmc":
        rows = [
            _row(stage, record, "mask autoencoder reconstruction mean Dice",
                 round(out["mask_autoencoder_reconstruction_dice"]["Mean"], 3), "-", None, ">= 0.95",
                 out["mask_autoencoder_reconstruction_dice"]["Mean"] >= 0.95),
            _row(stage, record, "SDMCFinetuned validation mean Dice (IS, HS)",
                 round(out["sdmc_finetuned_validation_dice"]["Mean"], 3), "UNet, same budget",
                 round(out["unet_validation_dice"]["Mean"], 3) if "unet_validation_dice" in out else None, ">= 0.5",
                 out["sdmc_finetuned_validation_dice"]["Mean"] >= 0.5),
            _row(stage, record, "single-step inference s/slice", out["single_step_seconds_per_slice"],
                 "LDM 50-step DDIM s/slice", out["ldm_ddim50_eta1_seconds_per_slice"], "faster",
                 out["single_step_seconds_per_slice"] < out["ldm_ddim50_eta1_seconds_per_slice"]),
        ]
        return rows
    if stage == "inference":
        rows = [_row(stage, record, f"{trainer}: sdmc_predict s/slice", out[trainer]["predict_seconds_per_slice"],
                     "bare network forward s/slice", out[trainer]["bare_forward_seconds_per_slice"], "overhead <= 15%",
                     out[trainer]["framework_overhead"] <= 0.15)
                for trainer in out if isinstance(out[trainer], dict) and "predict_seconds_per_slice" in out[trainer]]
        evaluation = out["evaluation"]
        nnunet = evaluation.get("nnunet_compute_metrics_on_folder_slices_per_second")
        rows.append(_row(stage, record, "sdmc_evaluate slices/s", evaluation["sdmc_evaluate_slices_per_second"],
                         "nnU-Net compute_metrics_on_folder slices/s", nnunet, "faster",
                         evaluation.get("evaluate_faster_than_nnunet")))
        return rows
    raise ValueError(f"unknown stage {stage}")


def _folds_and_interval(out: dict) -> str:
    """Which folds the U-Net figure pools, and its interval (outputs from before both knew fold 0 only)."""
    folds = "+".join(map(str, out.get("unet_folds", [0])))
    interval = out.get("unet_validation_mean_dice_95ci_over_patients")
    return f"folds {folds}" + (f", 95% interval over patients {interval}" if interval else "")


def markdown_table(rows: list[Row], machine: str) -> str:
    def cell(value) -> str:
        return "-" if value is None else ("yes" if value is True else "no" if value is False else str(value))

    lines = [f"Measured on {machine}.", "",
             "| stage | figure | value | peer (same run) | peer value | ratio | target | met | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row.stage} | {row.figure} | {cell(row.value)} | {row.peer} | {cell(row.peer_value)} | "
              f"{cell(row.ratio)} | {row.target} | {cell(row.met)} | {cell(row.peak_memory_mib)} |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=None, help="stages to run (default: all); others are read "
                        "from benchmarks/results/ when there")
    parser.add_argument("--training-minutes", type=float, default=10.0)
    parser.add_argument("--sdmc-minutes", type=float, default=15.0)
    args = parser.parse_args()
    commands = stage_commands(args)
    unknown = set(args.stages or []) - set(commands)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(commands)}")
    records = {}
    for stage, command in commands.items():
        saved = RAW_RESULTS / f"{stage}.json"
        if args.stages is None or stage in args.stages:
            print(f"[run_all] {stage}: {' '.join(command)}", file=sys.stderr, flush=True)
            records[stage] = run_stage(stage, command)
        elif saved.is_file():
            records[stage] = json.loads(saved.read_text())
    rows = [row for stage, record in records.items() for row in rows_of(stage, record)]
    machine = (f"{platform.node() or 'this machine'}: {platform.processor() or platform.machine()}, "
               f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
               f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
               f"{datetime.now(timezone.utc):%Y-%m-%d}")
    (HERE / "results.json").write_text(json.dumps({"machine": machine, "rows": [asdict(row) for row in rows],
                                                   "stages": records}, indent=2) + "\n")
    table = markdown_table(rows, machine)
    (HERE / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
