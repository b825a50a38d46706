"""`sdmc_train DATASET CONFIGURATION FOLD -tr TRAINER`: train (or resume, or validate) one fold.

    sdmc_train 2021 2d 0 -tr UNetTrainer
    sdmc_train 2021 2d 0 -tr UNetTrainer --c          # resume from checkpoint_latest
    torchrun --nproc_per_node 4 -m sdmcunet.training.run_training 2021 2d 0 -tr UNetTrainer
    sdmc_train 2021 2d 0 -tr nnUNetTrainer            # nnU-Net v2 itself (pip install 'sdmcunet[nnunet]')

A fold folder that holds a checkpoint is continued (--c), never trained over; one training at a
time writes a fold folder (`fold_lock`).
"""

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from sdmcunet import paths
from sdmcunet.experiment_planning.plans import load_plans, plans_path
from sdmcunet.raw_dataset import find_dataset
from sdmcunet.training.trainers import TRAINERS, Trainer
from sdmcunet.utils.cli import configure_logging, console_entry, non_negative_int, positive_int
from sdmcunet.utils.errors import SDMCError

log = logging.getLogger("sdmcunet.training")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdmc_train", description=__doc__.splitlines()[0])
    parser.add_argument("dataset_id", type=non_negative_int)
    parser.add_argument("configuration", help="plans configuration, e.g. 2d")
    parser.add_argument("fold", help="0-4, or 'all' to train on every case")
    parser.add_argument("-tr", dest="trainer", required=True,
                        help=f"trainer name ({', '.join(TRAINERS.names())}) or package.module:ClassName")
    parser.add_argument("-p", dest="plans", default="sdmcPlans", help="plans name (default sdmcPlans)")
    parser.add_argument("--c", dest="resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--val", dest="validation_only", action="store_true", help="only run the final validation")
    parser.add_argument("--npz", action="store_true", help="also save validation probabilities (for ensembling)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="override the plans' number of epochs")
    parser.add_argument("--iterations_per_epoch", type=positive_int, default=None,
                        help="override the plans' iterations")
    parser.add_argument("-device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-num_gpus", type=positive_int, default=1,
                        help="GPUs on this machine (starts torchrun when > 1)")
    parser.add_argument("-mask_autoencoder", type=Path, default=None,
                        help="SDMC fine-tuned variants: the mask autoencoder to use (a MaskAutoencoderTrainer "
                        "checkpoint, a diffusers folder, or a CompVis .ckpt such as model_finetuned_mask.ckpt); "
                        "default: the MaskAutoencoderTrainer result of the same dataset and fold")
    parser.add_argument("-num_loader_workers", type=non_negative_int, default=None,
                        help="augmentation worker processes (default: CPUs - 1, at most 8; 0 = in-process)")
    args = parser.parse_args(argv)
    if args.fold != "all" and not args.fold.isdigit():
        parser.error(f"fold must be a number or 'all', got {args.fold!r}")
    return args


def relaunch_with_torchrun(argv: list[str], num_gpus: int) -> int:
    """-num_gpus N outside torchrun: start N processes of this command through torchrun; the exit code of
    the first that failed (each prints its own error), else 0.

    Every argument goes to the processes as given: under torchrun (WORLD_SIZE set) -num_gpus starts
    nothing, and taking arguments out by their text cannot be exact (`-num_gpus=2`, or a fold or an
    epoch count that reads like N)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", f"--nproc_per_node={num_gpus}", "-m", "sdmcunet.training.run_training", *argv])
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        print(f"rank {rank} of the {num_gpus} training processes exited with code {failure.exitcode}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -N: ended by signal N
    return 0


def validate_final_checkpoint(trainer: Trainer, save_probabilities: bool) -> Path | None:
    """`--val`: predict the fold's validation cases with its final checkpoint (rank 0 returns the summary's path)."""
    trainer.initialize(initial_weights=False)
    trainer.load(trainer.checkpoint_path("final"), weights_only=True)
    with trainer.exclusive_fold_folder():
        return trainer.final_validation(save_probabilities) if trainer.distributed.is_main else None


@console_entry(after_interrupt="run the same command with --c to continue from the last completed epoch")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.num_gpus > 1 and "WORLD_SIZE" not in os.environ:
        return relaunch_with_torchrun(argv, args.num_gpus)
    configure_logging()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SDMCError("-device cuda was asked for but no CUDA GPU is available; use -device cpu")
    preprocessed = find_dataset(paths.preprocessed_root(), args.dataset_id)
    plans = load_plans(plans_path(preprocessed, args.plans))
    fold = args.fold if args.fold == "all" else int(args.fold)
    workers = args.num_loader_workers if args.num_loader_workers is not None else min(8, max(0, (os.cpu_count() or 1) - 1))
    options = {"mask_autoencoder": args.mask_autoencoder} if args.mask_autoencoder else {}
    trainer = TRAINERS.get(args.trainer)(plans, args.configuration, fold, preprocessed, args.device,
                                         args.epochs, args.iterations_per_epoch, workers, options=options)
    if args.validation_only:
        summary = validate_final_checkpoint(trainer, args.npz)
    else:
        summary = trainer.run_training(resume=args.resume, validate=True, save_probabilities=args.npz)
    if trainer.distributed.is_main:
        print(f"fold {fold} of {type(trainer).__name__} done: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
