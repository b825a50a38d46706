"""Bad input to `sdmc_train`, and numbers out of range on every command's line: rows of docs/bad_input.md.

As in tests/test_bad_input.py (whose helpers `run` and `refused` these rows share), a row feeds a
command one bad input in-process through its `main` and checks what the user gets: exit code 2
and a message naming the option, the plans field or the folder, no traceback, and what is left on
disk. The training rows use 2 synthetic patients and fold `all`, with tiny plans (`guardPlans`).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.run
from conftest import make_preprocessed_dataset
from test_bad_input import refused, run
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from sdmcunet.dataset_conversion import convert_stroke2021, download_stroke2021, synthetic
from sdmcunet.ensembling import ensemble
from sdmcunet.evaluation import evaluate_predictions, find_best_configuration
from sdmcunet.experiment_planning import fingerprint, plan_and_preprocess, verify_dataset
from sdmcunet.experiment_planning.plans import plans_path, save_plans
from sdmcunet.inference import predict
from sdmcunet.postprocessing import remove_small_components
from sdmcunet.reporting import report
from sdmcunet.training import run_training
from sdmcunet.results.checkpoints import load_checkpoint
from sdmcunet.training.fold_lock import LOCK_FILE
from sdmcunet.training.trainers.base import Trainer
from sdmcunet.utils.files import read_json
from sdmcunet.weights import import_reference

DATASET = "Dataset2021_Stroke2021"
PLANS = "guardPlans"
FOLD = DATASET + f"/UNetTrainer__{PLANS}__2d/fold_all"
EPOCHS = 2
TRAINING = ["2021", "2d", "all", "-tr", "UNetTrainer", "-p", PLANS, "--epochs", str(EPOCHS),
            "--iterations_per_epoch", "1", "-num_loader_workers", "0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """2 synthetic patients at 64 px, planned for the CPU, plus `PLANS`: a UNet of a few thousand weights."""
    preprocessed = make_preprocessed_dataset(tmp_path_factory.mktemp("guards"), 2, 3, 64, "--cpu")
    save_plans(edited_plans(preprocessed), plans_path(preprocessed, PLANS))
    return preprocessed


def edited_plans(preprocessed: Path, batch_size: int = 2, **unet_sizes) -> dict:
    """The CPU plans renamed `PLANS`: one validation batch, this baseline batch size, a tiny UNet unless told."""
    plans = read_json(preprocessed / "sdmcPlans.json") | {"plans_name": PLANS}
    baseline = plans["configurations"]["2d"]["families"]["baseline"]
    baseline["batch_size"], baseline["schedule"]["val_iterations"] = batch_size, 1
    baseline["networks"]["UNet"]["features"] = [4, 4, 8, 8, 16, 4]
    baseline["networks"]["UNet"].update(unet_sizes)
    return plans


@pytest.fixture
def preprocessed(dataset, monkeypatch, tmp_path) -> Path:
    """A copy of the preprocessed dataset (a few hundred kB) for rows that edit its plans; results to tmp_path."""
    copy = Path(shutil.copytree(dataset, tmp_path / "preprocessed" / DATASET))
    monkeypatch.setenv("SDMC_preprocessed", str(copy.parent))
    monkeypatch.setenv("SDMC_results", str(tmp_path / "results"))
    return copy


@pytest.fixture
def results(preprocessed, tmp_path) -> Path:
    return tmp_path / "results"


def write_plans(preprocessed: Path, plans: dict) -> None:
    """`plans` as the file `PLANS`, as a user edits it (no planner, no check on writing)."""
    plans_path(preprocessed, PLANS).write_text(json.dumps(plans))


# ---------------------------------------------------------------- numbers on the command line

def test_train_negative_epochs_or_iterations(results, capsys):
    for option, value in (("--epochs", "-3"), ("--iterations_per_epoch", "-2"), ("--epochs", "0")):
        refused(capsys, run(run_training.main, *TRAINING, option, value),
                f"argument {option}: must be a positive integer, got '{value}'")
    assert not results.exists()


OUT_OF_RANGE = [  # every number option of every command, with a value it must refuse before doing anything
    (synthetic.main, ["-o", "out"], "--patients", "0", "a positive integer"),
    (synthetic.main, ["-o", "out"], "--seed", "-1", "an integer from 0 to 4294967295"),
    (synthetic.main, ["-o", "out"], "--size", "-64", "a positive integer"),
    (download_stroke2021.main, ["-o", "out"], "--retries", "-1", "an integer >= 0"),
    (download_stroke2021.main, ["-o", "out"], "--timeout", "0", "a positive number"),
    (download_stroke2021.main, ["-o", "out"], "--max-extracted-gb", "nan", "a positive number"),
    (convert_stroke2021.main, ["-i", "release"], "-d", "-1", "an integer >= 0"),
    (convert_stroke2021.main, ["-i", "release"], "-np", "0", "a positive integer"),
    (verify_dataset.main, ["-d", "2021"], "-np", "0", "a positive integer"),
    (fingerprint.main, ["-d", "2021"], "-np", "-2", "a positive integer"),
    (plan_and_preprocess.main, ["-d", "2021"], "-gpu_memory_target", "-8", "a positive number"),
    (plan_and_preprocess.main, ["-d", "2021"], "--holdout_fraction", "0", "a number between 0 and 1 (both excluded)"),
    (plan_and_preprocess.plan_main, ["-d", "2021"], "-gpu_memory_target", "inf", "a positive number"),
    (plan_and_preprocess.preprocess_main, ["-d", "2021"], "-np", "0", "a positive integer"),
    (run_training.main, ["2021", "2d", "0", "-tr", "UNetTrainer"], "-num_gpus", "0", "a positive integer"),
    (run_training.main, ["2021", "2d", "0", "-tr", "UNetTrainer"], "-num_loader_workers", "-1", "an integer >= 0"),
    (predict.main, ["-i", "in", "-o", "out", "-m", "model"], "-num_samples", "0", "a positive integer"),
    (predict.main, ["-i", "in", "-o", "out", "-m", "model"], "-seed", "-1", "an integer from 0 to 4294967295"),
    (predict.main, ["-i", "in", "-o", "out", "-m", "model"], "-np", "-1", "an integer >= 0"),
    (evaluate_predictions.main, ["-d", "2021", "-tr", "UNetTrainer"], "-f", "-1", "an integer >= 0"),
    (evaluate_predictions.main, ["-ref", "ref", "-pred", "pred"], "-np", "0", "a positive integer"),
    (ensemble.main, ["-i", "a", "b", "-o", "out"], "-np", "0", "a positive integer"),
    (remove_small_components.main, ["-i", "in", "-o", "out", "-pp", "pp.json"], "-np", "0", "a positive integer"),
    (find_best_configuration.main, ["-d", "2021"], "-f", "-1", "an integer >= 0"),
    (report.main, [], "-d", "-1", "an integer >= 0"),
    (import_reference.main, ["-i", "in.ckpt", "-o", "out"], "-d", "-1", "an integer >= 0"),
]


@pytest.mark.parametrize("main, arguments, option, value, expected", OUT_OF_RANGE,
                         ids=[f"{main.__module__.rsplit('.', 1)[1]}{option}={value}"
                              for main, _, option, value, _ in OUT_OF_RANGE])
def test_number_out_of_range_on_any_command_line(tmp_path, monkeypatch, capsys, main, arguments, option, value,
                                                 expected):
    monkeypatch.chdir(tmp_path)
    refused(capsys, run(main, *arguments, option, value), f"argument {option}: must be {expected}, got '{value}'")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- -num_gpus: the torchrun relaunch

@pytest.mark.parametrize("num_gpus", [["-num_gpus", "2"], ["-num_gpus=2"]])
def test_train_num_gpus_gives_torchrun_every_other_argument(monkeypatch, num_gpus):
    """Fold 2 and --epochs 2 read like `-num_gpus 2`'s value: the relaunch once dropped them."""
    launched = []
    monkeypatch.setattr(torch.distributed.run, "main", launched.append)
    arguments = ["2021", "2d", "2", "-tr", "UNetTrainer", "--epochs", "2", *num_gpus, "-device", "cpu"]
    assert run_training.main(arguments) == 0
    [torchrun_arguments] = launched
    assert torchrun_arguments[:4] == ["--standalone", "--nproc_per_node=2", "-m", "sdmcunet.training.run_training"]
    forwarded = run_training.parse_args(torchrun_arguments[4:])
    assert (forwarded.fold, forwarded.epochs, forwarded.trainer, forwarded.device) == ("2", 2, "UNetTrainer", "cpu")


def test_train_num_gpus_whose_processes_fail(monkeypatch, capsys):
    """Each process prints its own `error: ...`; torchrun's ChildFailedError becomes their exit code."""
    def failing(arguments: list[str]) -> None:
        raise ChildFailedError("sdmcunet.training.run_training", {0: ProcessFailure(0, 4321, 2, "")})

    monkeypatch.setattr(torch.distributed.run, "main", failing)
    assert run_training.main(["77", "2d", "0", "-tr", "UNetTrainer", "-num_gpus", "2", "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "rank 0 of the 2 training processes exited with code 2" in err and "Traceback" not in err


# ---------------------------------------------------------------- a fold that holds a checkpoint

def test_train_interrupted_then_the_same_command_without_c(results, monkeypatch, capsys):
    """Ctrl-C says how to continue; the same command without --c is refused, its checkpoint kept; --c continues."""
    fold = results / FOLD
    train_epoch = Trainer._train_epoch

    def interrupted_after_one_epoch(self, *args) -> None:
        train_epoch(self, *args)
        raise KeyboardInterrupt

    with monkeypatch.context() as ctrl_c:
        ctrl_c.setattr(Trainer, "_train_epoch", interrupted_after_one_epoch)
        assert run_training.main(TRAINING) == 130
    assert "interrupted; run the same command with --c to continue" in capsys.readouterr().err
    latest = (fold / "checkpoint_latest.pth").read_bytes()
    refused(capsys, run(run_training.main, *TRAINING), str(fold), "holds checkpoint_latest.pth", "continue it with --c",
            "move the fold folder away")
    assert (fold / "checkpoint_latest.pth").read_bytes() == latest and not (fold / "checkpoint_final.pth").exists()
    assert run(run_training.main, *TRAINING, "--c") == 0
    assert load_checkpoint(fold / "checkpoint_final.pth")["epoch"] == EPOCHS
    final = (fold / "checkpoint_final.pth").read_bytes()
    refused(capsys, run(run_training.main, *TRAINING), "holds checkpoint_final.pth")  # a finished fold too
    assert (fold / "checkpoint_final.pth").read_bytes() == final and not (fold / LOCK_FILE).exists()


def test_interrupted_command_says_how_to_finish(tmp_path, monkeypatch, capsys):
    """Every command but sdmc_train completes its work when run again (it skips or redoes what is done)."""
    def interrupted(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "make_synthetic_dataset", interrupted)
    assert run(synthetic.main, "-o", tmp_path / "out") == 130
    assert capsys.readouterr().err == "interrupted; run the same command again to finish\n"


# ---------------------------------------------------------------- plans beyond the machine

def test_train_batch_size_beyond_the_memory(preprocessed, results, capsys):
    write_plans(preprocessed, edited_plans(preprocessed, batch_size=1_000_000))
    refused(capsys, run(run_training.main, *TRAINING), f"plans {PLANS}, configuration '2d': "
            "families.baseline.batch_size = 1000000: one training step of UNetTrainer needs about",
            "GB of available RAM", "images per batch fit: lower batch_size")
    assert not results.exists()


def test_train_network_beyond_the_memory(preprocessed, results, capsys):
    write_plans(preprocessed, edited_plans(preprocessed, features=[100_000, 16, 32, 64, 128, 16]))
    refused(capsys, run(run_training.main, *TRAINING), "families.baseline.networks.UNet: training UNetTrainer needs",
            "even for a batch of one image", "make these networks smaller")
    assert not results.exists()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.parametrize("trainer, network, sizes, reason", [
    ("UNetTrainer", "UNet", {"features": [16, 16, 32]}, "Sequence must have length 6, got 3"),
    ("UNetTrainer", "UNet", {"features": [0, 16, 32, 64, 128, 16]}, "IndexError"),
    ("SwinUNETRTrainer", "SwinUNETR", {"feature_size": 13}, "feature_size should be divisible by 12"),
])
def test_train_network_the_plans_sizes_cannot_build(preprocessed, results, capsys, trainer, network, sizes, reason):
    plans = edited_plans(preprocessed)
    plans["configurations"]["2d"]["families"]["baseline"]["networks"][network] = sizes
    write_plans(preprocessed, plans)
    arguments = [trainer if argument == "UNetTrainer" else argument for argument in TRAINING]
    refused(capsys, run(run_training.main, *arguments),
            f"families.baseline.networks.{network}: no {trainer} network can be built with these sizes", reason)
    assert not results.exists()
