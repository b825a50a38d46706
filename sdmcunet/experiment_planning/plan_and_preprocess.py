"""`sdmc_plan_and_preprocess`, and its stages `sdmc_plan_experiment` and `sdmc_preprocess`.

    sdmc_plan_and_preprocess -d 2021            # fingerprint, plans, splits, preprocessed data

Without `-gpu_memory_target` the plans are for the CPU unless a CUDA GPU is present, in which
case they target 90% of its memory; `--cpu` forces CPU plans. Everything is written under
`$SDMC_preprocessed/Dataset{ID}_{Name}/`.
"""

import argparse
import logging
from pathlib import Path

from sdmcunet.experiment_planning.fingerprint import FINGERPRINT_FILE, dataset_folders, extract_fingerprint
from sdmcunet.experiment_planning.planners import CONFIGURATION, PLANNERS
from sdmcunet.experiment_planning.plans import load_existing_plans, plans_path, save_plans
from sdmcunet.experiment_planning.plans_manager import PlansManager
from sdmcunet.experiment_planning.splits import TooFewPatients, load_or_create_splits, move_holdout
from sdmcunet.experiment_planning.verify_dataset import verify_or_raise
from sdmcunet.preprocessing.preprocessor import preprocess_dataset
from sdmcunet.results.layout import references_folder
from sdmcunet.raw_dataset import DATASET_FILE, load_dataset_json, training_cases
from sdmcunet.utils.cli import (
    add_num_processes_argument, configure_logging, console_entry, fraction, non_negative_int, positive_float,
)
from sdmcunet.utils.files import atomic_write_bytes, read_json

log = logging.getLogger("sdmcunet.planning")
DEFAULT_PLANNER = "SDMCPlanner"
GPU_MEMORY_SHARE = 0.9


def gpu_memory_target(requested_gb: float | None, force_cpu: bool) -> float | None:
    """The GPU memory to plan for, or None for CPU plans."""
    if force_cpu:
        return None
    if requested_gb is not None:
        return requested_gb
    import torch

    if torch.cuda.is_available():
        return round(GPU_MEMORY_SHARE * torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return None


def plan_experiment(dataset_id: int, planner_name: str = DEFAULT_PLANNER, gpu_memory_gb: float | None = None) -> Path:
    """Write the plans of `planner_name`, keeping configurations a user added to an older file."""
    raw_folder, preprocessed_folder = dataset_folders(dataset_id)
    fingerprint = read_json(preprocessed_folder / FINGERPRINT_FILE) if (preprocessed_folder / FINGERPRINT_FILE).is_file() \
        else extract_fingerprint(raw_folder, preprocessed_folder)
    planner = PLANNERS.get(planner_name)(fingerprint, read_json(raw_folder / DATASET_FILE), raw_folder.name, gpu_memory_gb)
    plans = planner.plan()
    path = plans_path(preprocessed_folder, plans["plans_name"])
    existing = load_existing_plans(path)
    if existing:
        custom = {name: config for name, config in existing.get("configurations", {}).items()
                  if name not in plans["configurations"]}
        plans["configurations"].update(custom)
        if custom:
            log.info("kept the custom configuration(s) %s from %s", ", ".join(custom), path)
    save_plans(plans, path)
    atomic_write_bytes(preprocessed_folder / DATASET_FILE, (raw_folder / DATASET_FILE).read_bytes())
    log.info("wrote %s (%s plans)", path, plans["compute_target"]["device"])
    return path


def preprocess(dataset_id: int, plans_name: str, configurations: list[str], num_processes: int = 1) -> None:
    raw_folder, preprocessed_folder = dataset_folders(dataset_id)
    plans = PlansManager.load(plans_path(preprocessed_folder, plans_name))
    dataset = load_dataset_json(raw_folder)
    cases = training_cases(raw_folder, dataset)
    for name in configurations:
        config = plans.configuration(name)
        preprocess_dataset(cases, preprocessed_folder / config.data_identifier, references_folder(preprocessed_folder),
                           config, dataset.channel_names, len(dataset.labels), num_processes)
    try:
        load_or_create_splits(preprocessed_folder, raw_folder, read_json(preprocessed_folder / FINGERPRINT_FILE))
    except TooFewPatients as reason:
        log.warning("no cross-validation splits written: %s", reason)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", dest="dataset_id", type=non_negative_int, required=True, help="dataset id, e.g. 2021")
    add_num_processes_argument(parser)


def _add_planning(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-pl", dest="planner", default=DEFAULT_PLANNER,
                        help=f"planner name ({', '.join(PLANNERS.names())}) or package.module:ClassName")
    parser.add_argument("-gpu_memory_target", type=positive_float, default=None,
                        help="plan for a GPU with this many GB")
    parser.add_argument("--cpu", action="store_true", help="write CPU plans even when a GPU is present")


@console_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdmc_plan_and_preprocess", description=__doc__.splitlines()[0])
    _add_common(parser)
    _add_planning(parser)
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="also read every raw image and label to verify them (file sets are always checked)")
    parser.add_argument("--holdout_fraction", type=fraction, default=None,
                        help="move this fraction of the patients to imagesTs/labelsTs first (once)")
    parser.add_argument("--clean", action="store_true", help="recompute the fingerprint even if up to date")
    args = parser.parse_args(argv)
    configure_logging()
    raw_folder, preprocessed_folder = dataset_folders(args.dataset_id)
    # The file sets are always checked (cheap); reading every image only on request, as in nnU-Net.
    verify_or_raise(raw_folder, args.num_processes, read_images=args.verify_dataset_integrity)
    if args.holdout_fraction is not None:
        held_out = move_holdout(raw_folder, args.holdout_fraction)
        log.info("%d cases are held out in imagesTs/labelsTs", len(held_out))
    extract_fingerprint(raw_folder, preprocessed_folder, args.num_processes, args.clean)
    path = plan_experiment(args.dataset_id, args.planner, gpu_memory_target(args.gpu_memory_target, args.cpu))
    preprocess(args.dataset_id, path.stem, [CONFIGURATION], args.num_processes)
    print(f"planned and preprocessed {raw_folder.name}: {path}")
    return 0


@console_entry
def plan_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdmc_plan_experiment", description="write plans from the fingerprint")
    parser.add_argument("-d", dest="dataset_id", type=non_negative_int, required=True)
    _add_planning(parser)
    args = parser.parse_args(argv)
    configure_logging()
    print(f"wrote {plan_experiment(args.dataset_id, args.planner, gpu_memory_target(args.gpu_memory_target, args.cpu))}")
    return 0


@console_entry
def preprocess_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdmc_preprocess", description="preprocess a dataset as its plans say")
    _add_common(parser)
    parser.add_argument("-p", dest="plans", default="sdmcPlans", help="plans name (default sdmcPlans)")
    parser.add_argument("-c", dest="configurations", nargs="+", default=[CONFIGURATION])
    args = parser.parse_args(argv)
    configure_logging()
    preprocess(args.dataset_id, args.plans, args.configurations, args.num_processes)
    print("preprocessing done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
