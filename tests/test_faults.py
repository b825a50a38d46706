"""Crashes and full disks: SIGKILL at random points of training, preprocessing and prediction, and
writes that fail, never leave a file that is taken as complete, and a re-run ends as an
uninterrupted run does.

Kill points come from seeded generators, so every run of this file tries the same ones (those
given in seconds land where the machine's speed puts them). They come in chains: a command is
killed, run again and killed again several times, then run to the end. `--fault-trials N` sets
the number of kill points in training (default 9, quick enough for CI; `--fault-trials 100`
for a long run); preprocessing and prediction get N // 3 each, at least 3. Commands run in
processes forked from a warm server (`fault_injection.py`), so that a trial costs the command's
own work rather than the seconds of importing torch.
"""

import errno
import fcntl
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_preprocessed_dataset
from fault_injection import CommandServer, Run

from sdmcunet.dataset_conversion import convert_stroke2021
from sdmcunet.experiment_planning import plan_and_preprocess
from sdmcunet.experiment_planning.plans import plans_path, save_plans
from sdmcunet.imageio import read_png, write_label_map
from sdmcunet.imageio.label_map_folders import label_map_files, read_label_map
from sdmcunet.inference import predict
from sdmcunet.training import run_training
from sdmcunet.results.checkpoints import load_checkpoint, save_checkpoint
from sdmcunet.training.fold_lock import LOCK_FILE, fold_lock
from sdmcunet.training.trainers.base import Trainer
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json

NAME = "Dataset2021_Stroke2021"
PLANS = "faultPlans"  # a tiny copy of the CPU plans: a training epoch takes a fraction of a second
MODEL = f"UNetTrainer__{PLANS}__2d"
TRAIN, PREDICT = "sdmcunet.training.run_training", "sdmcunet.inference.predict"
PLAN_AND_PREPROCESS = "sdmcunet.experiment_planning.plan_and_preprocess"
EPOCHS, ITERATIONS = 4, 2
TRAINING = ["2021", "2d", "0", "-tr", "UNetTrainer", "-p", PLANS, "--epochs", str(EPOCHS),
            "--iterations_per_epoch", str(ITERATIONS), "-num_loader_workers", "0"]
TRAIN_STEP = "sdmcunet.training.trainers.base:Trainer.train_step"
PREPROCESSING = ["-d", "2021", "--cpu", "-np", "2"]
WITH_EXTRAS = ("--save_probabilities", "--overlays")  # prediction: three files per case
WRITE_FAILED = (r"could not be written \((?P<reason>.*); [\d.]+ GB free on its disk\); "
                r"the previous file, if any, is intact")


# --- data, the command server, uninterrupted runs -----------------------------------------------
@pytest.fixture(scope="module")
def fault_trials(request) -> tuple[int, int]:
    """Kill trials of training, and of preprocessing and of prediction each."""
    trials = request.config.getoption("--fault-trials")
    return trials, max(3, trials // 3)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Synthetic data (5 patients, 64 px) planned and preprocessed, with the tiny plans `PLANS`."""
    root = tmp_path_factory.mktemp("faults")
    preprocessed = make_preprocessed_dataset(root, 5, 3, 64, "--cpu")
    plans = read_json(preprocessed / "sdmcPlans.json")
    baseline = plans["configurations"]["2d"]["families"]["baseline"]
    baseline["batch_size"], baseline["schedule"]["val_iterations"] = 2, 1
    baseline["networks"]["UNet"]["features"] = [4, 4, 8, 8, 16, 4]
    save_plans(plans | {"plans_name": PLANS}, plans_path(preprocessed, PLANS))
    return root


def folders(data: Path, **overrides: Path) -> dict[str, Path]:
    """The four SDMC_* folders of a command: the test data unless `overrides` say otherwise."""
    return {"SDMC_raw": data / "raw", "SDMC_preprocessed": data / "preprocessed",
            "SDMC_results": data / "results", "SDMC_weights": data / "weights"} | overrides


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = CommandServer(tmp_path_factory.mktemp("command_logs"))
    yield server
    server.close()


def timed(run: Callable[[], Run]) -> float:
    """Seconds a command took to complete (time-based kills are drawn within them)."""
    start = time.monotonic()
    result = run()
    assert result.returncode == 0, result.output[-3000:]
    return time.monotonic() - start


@pytest.fixture(scope="module")
def reference_training(data, server) -> tuple[Path, float]:
    """The fold trained without interruption, and the seconds it took."""
    results = data / "reference_results"
    seconds = timed(lambda: server.run(TRAIN, TRAINING, folders(data, SDMC_results=results)))
    return results / NAME / MODEL / "fold_0", seconds


def predict_arguments(data: Path, output: Path, *options: str) -> list[str]:
    return ["-i", str(data / "raw" / NAME / "imagesTr"), "-o", str(output), "-d", "2021", "-tr", "UNetTrainer",
            "-p", PLANS, "-f", "0", *options]


@pytest.fixture(scope="module")
def reference_prediction(data, server, reference_training) -> tuple[Path, float]:
    """Every raw training case predicted by the reference model without interruption, and the seconds it took."""
    output = data / "reference_prediction"
    seconds = timed(lambda: server.run(PREDICT, predict_arguments(data, output, *WITH_EXTRAS),
                                       folders(data, SDMC_results=data / "reference_results")))
    return output, seconds


# --- kill points and checks shared by the three commands ---------------------------------------
def write_kill(rng: np.random.Generator, writes: int, of: str = "") -> dict:
    """Killed in one of the first `writes` atomic writes (of files whose name holds `of`), with a
    random part of the temporary file on disk."""
    return {"at_write": int(rng.integers(1, writes + 1)), "of": of, "written": round(float(rng.random()), 3)}


def time_kill(rng: np.random.Generator, seconds: float) -> dict:
    """Killed at a random time of a run that takes about `seconds` (an uninterrupted one's time)."""
    return {"after_seconds": round(float(rng.uniform(0.02, 0.9)) * seconds, 3)}


def chains(kinds: list[Callable[[], dict]], trials: int) -> list[list[dict]]:
    """`trials` kill points, one of each kind in turn, cut into chains of one cycle through the kinds."""
    kills = [kinds[trial % len(kinds)]() for trial in range(trials)]
    return [kills[start:start + len(kinds)] for start in range(0, trials, len(kinds))]


def time_then_writes(rng: np.random.Generator, trials: int, writes: int, seconds: float) -> list[list[dict]]:
    """Chains of a kill at any time of a fresh run, then two kills in writes early enough (within
    the first third of the `writes` of an uninterrupted run) to be reached by the runs that follow."""
    return chains([lambda: time_kill(rng, seconds), lambda: write_kill(rng, writes // 3),
                   lambda: write_kill(rng, writes // 3)], trials)


def kill_and_rerun(run_in: Callable[[Path, dict | None], Run], workspaces: Path, kill_chains: list[list[dict]],
                   check_after_kill: Callable[[Path], None], check_result: Callable[[Path], None]) -> None:
    """For each chain, in a new workspace: one run per kill point, each continuing the work the
    killed one left, then one run without a kill, which must complete the work. A run that ends
    before its kill point has completed it: the chain's other kill points are skipped."""
    reached = 0
    for index, kills in enumerate(kill_chains):
        workspace = workspaces / f"chain_{index}"
        for kill in [*kills, None]:
            run = run_in(workspace, kill)
            if not run.killed:
                break
            reached += 1
            check_after_kill(workspace)
        assert run.returncode == 0, run.output[-3000:]
        check_result(workspace)
    trials = sum(map(len, kill_chains))
    assert reached >= trials // 2, f"only {reached} of {trials} kill points were reached: {kill_chains}"


def visible_files(folder: Path) -> set[str]:
    """Relative paths of the files below `folder`, without the hidden temporary files of atomic writes."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(folder).parts)}


def hidden_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".*") if path.is_file()]


def same_content(folder: Path, reference: Path, names: set[str]) -> None:
    for name in names:
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name


def error_line(output: str) -> str:
    """The one-line message a command ends with on a user-facing error."""
    return next(line for line in reversed(output.splitlines()) if line.startswith("error: "))


# --- training -----------------------------------------------------------------------------------
def training_kills(rng: np.random.Generator, trials: int, seconds: float) -> list[list[dict]]:
    """Chains of kills at any time of a fresh run, in a checkpoint write, at a training step, in any
    write (model description, checkpoints, plot), and in the final validation's writes (after the
    final checkpoint): each after the first early enough to be reached by the run that continues."""
    return chains([lambda: time_kill(rng, seconds),
                   lambda: write_kill(rng, 2, of="checkpoint_"),
                   lambda: {"at_call": TRAIN_STEP, "n": int(rng.integers(1, ITERATIONS + 1))},
                   lambda: write_kill(rng, 8),
                   lambda: write_kill(rng, 5, of=".nii.gz")], trials)


def check_training_after_kill(fold: Path) -> None:
    """Every checkpoint and validation output in place is complete (half-written ones are hidden)."""
    for checkpoint in fold.glob("checkpoint_*.pth"):
        assert load_checkpoint(checkpoint)["epoch"] <= EPOCHS
    validation = fold / "validation"
    if (validation / "summary.json").is_file():
        read_json(validation / "summary.json")
    for path in label_map_files(validation).values() if validation.is_dir() else []:
        read_label_map(path)


def check_training_result(fold: Path, reference: Path) -> None:
    """The weights, validation predictions and summary of the uninterrupted run; no leftovers."""
    final, expected = (load_checkpoint(folder / "checkpoint_final.pth") for folder in (fold, reference))
    assert (final["epoch"], final["iteration"]) == (EPOCHS, EPOCHS * ITERATIONS)
    assert final["network"].keys() == expected["network"].keys()
    for key, value in expected["network"].items():
        assert torch.equal(final["network"][key], value), key
    assert final["best_selection"] == expected["best_selection"]
    assert not (fold / "checkpoint_latest.pth").exists() and not list(fold.glob(".checkpoint_*"))
    assert read_json(fold / "validation" / "summary.json") == read_json(reference / "validation" / "summary.json")
    maps, expected_maps = (label_map_files(folder / "validation") for folder in (fold, reference))
    assert maps.keys() == expected_maps.keys()
    for name, path in maps.items():
        assert np.array_equal(read_label_map(path)[0], read_label_map(expected_maps[name])[0]), name


def test_training_killed_anywhere_resumes_to_the_weights_of_an_uninterrupted_run(data, server, reference_training,
                                                                                  fault_trials, tmp_path):
    reference, seconds = reference_training
    kill_and_rerun(
        lambda results, kill: server.run(TRAIN, [*TRAINING, "--c"], folders(data, SDMC_results=results), kill=kill),
        tmp_path, training_kills(np.random.default_rng(2021), fault_trials[0], seconds),
        lambda results: check_training_after_kill(results / NAME / MODEL / "fold_0"),
        lambda results: check_training_result(results / NAME / MODEL / "fold_0", reference))


# --- preprocessing ------------------------------------------------------------------------------
def check_preprocessing_after_kill(dataset: Path, reference: Path) -> None:
    """What is in place equals the uninterrupted run's; a case whose json is there is complete
    (the json is written last)."""
    present = visible_files(dataset)
    cases = [Path(name).stem for name in present if name.startswith("sdmcPlans_2d/") and name.endswith(".json")]
    assert {f"sdmcPlans_2d/{case}{ending}" for case in cases for ending in (".npy", "_seg.npy")} <= present
    same_content(dataset, reference, present)


def test_preprocessing_killed_anywhere_completes_with_the_arrays_of_an_uninterrupted_run(data, server, fault_trials,
                                                                                         tmp_path):
    def preprocess(preprocessed: Path, kill: dict | None = None) -> Run:
        return server.run(PLAN_AND_PREPROCESS, PREPROCESSING, folders(data, SDMC_preprocessed=preprocessed), kill=kill)

    seconds = timed(lambda: preprocess(tmp_path / "uninterrupted"))
    reference = tmp_path / "uninterrupted" / NAME
    expected = visible_files(reference)
    kills = time_then_writes(np.random.default_rng(7), fault_trials[1], len(expected), seconds)

    def check_result(preprocessed: Path) -> None:
        assert visible_files(preprocessed / NAME) == expected
        same_content(preprocessed / NAME, reference, expected)

    kill_and_rerun(preprocess, tmp_path / "killed", kills,
                   lambda preprocessed: check_preprocessing_after_kill(preprocessed / NAME, reference), check_result)


# --- prediction ---------------------------------------------------------------------------------
def read_output(path: Path) -> np.ndarray:
    """What a prediction output holds: probabilities, an overlay picture or a label map."""
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return arrays["probabilities"]
    return read_png(path) if path.parent.name == "overlays" else read_label_map(path)[0]


def check_predictions_after_kill(output: Path, reference: Path) -> None:
    """Every output in place equals the uninterrupted run's (half-written ones are hidden).

    Probabilities to within float16 rounding: a resumed run batches the remaining slices
    differently, and a CPU convolution's last float32 bits depend on the batch it runs in
    (5e-7 here), which can move a float16 value by one step. Label maps and overlays are exact.
    """
    for name in visible_files(output) - {"prediction_info.json"}:
        ours, theirs = read_output(output / name), read_output(reference / name)
        if name.endswith(".npz"):
            assert np.allclose(ours.astype(np.float32), theirs.astype(np.float32), rtol=0, atol=1e-3), name
        else:
            assert np.array_equal(ours, theirs), name


def test_prediction_killed_anywhere_completes_with_the_outputs_of_an_uninterrupted_run(data, server,
                                                                                       reference_prediction,
                                                                                       fault_trials, tmp_path):
    reference, seconds = reference_prediction
    expected = visible_files(reference)
    kills = time_then_writes(np.random.default_rng(11), fault_trials[1], len(expected), seconds)

    def check_result(output: Path) -> None:
        assert visible_files(output) == expected
        # what killed runs left half-written is not taken for a prediction (by sdmc_evaluate, for one)
        assert label_map_files(output).keys() == label_map_files(reference).keys()
        check_predictions_after_kill(output, reference)

    kill_and_rerun(
        lambda output, kill: server.run(PREDICT, predict_arguments(data, output, *WITH_EXTRAS),
                                        folders(data, SDMC_results=data / "reference_results"), kill=kill),
        tmp_path, kills,
        lambda output: check_predictions_after_kill(output, reference), check_result)


# --- full disks ---------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Commands run in this process on one thread, as the server's do (see `CommandServer`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fill_the_disk_from_call(monkeypatch, library, name: str, first_failing: int) -> None:
    """`library.name` writes normally until its `first_failing`-th call; from then on it writes a
    little of its file and fails as on a full disk."""
    original, calls = getattr(library, name), itertools.count(1)

    def writer(*args, **kwargs):
        if next(calls) < first_failing:
            return original(*args, **kwargs)
        Path(next(arg for arg in args if isinstance(arg, (str, Path)))).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(library, name, writer)


def test_a_full_disk_while_saving_a_checkpoint_stops_training_and_keeps_the_previous_one(data, one_thread,
                                                                                         monkeypatch, capsys, tmp_path):
    for variable, folder in folders(data, SDMC_results=tmp_path).items():
        monkeypatch.setenv(variable, str(folder))
    fill_the_disk_from_call(monkeypatch, torch, "save", 3)  # epoch 1 saves its best and latest checkpoints
    assert run_training.main(TRAINING) == 2
    error = error_line(capsys.readouterr().err)
    fold = tmp_path / NAME / MODEL / "fold_0"
    match = re.fullmatch(rf"error: {fold}/(checkpoint_\w+\.pth): {WRITE_FAILED}", error)
    assert match and match["reason"] == "No space left on device", error
    assert load_checkpoint(fold / match[1])["epoch"] == 1
    assert not hidden_files(fold)


@pytest.mark.parametrize("library, writer", [(sitk, "WriteImage"), (np, "savez_compressed")])
def test_a_full_disk_while_writing_predictions_stops_and_keeps_the_previous_outputs(data, reference_prediction,
                                                                                    one_thread, monkeypatch, capsys,
                                                                                    tmp_path, library, writer):
    reference, _ = reference_prediction
    output = tmp_path / "predictions"
    shutil.copytree(reference, output)
    for path in label_map_files(output).values():  # as if from another model: --overwrite replaces them
        write_label_map(np.ones_like(read_label_map(path)[0]), path)
    previous = {name: (output / name).read_bytes() for name in visible_files(output)}
    monkeypatch.setenv("SDMC_results", str(data / "reference_results"))
    fill_the_disk_from_call(monkeypatch, library, writer, 4)
    assert predict.main(predict_arguments(data, output, *WITH_EXTRAS, "--overwrite", "-np", "0")) == 2
    error = error_line(capsys.readouterr().err)
    match = re.fullmatch(rf"error: {output}/(\S+): {WRITE_FAILED}", error)
    assert match and match["reason"] == "No space left on device", error
    assert (output / match[1]).read_bytes() == previous[match[1]]
    assert visible_files(output) == previous.keys() and not hidden_files(output)
    for name in previous:  # each output is its previous version or the complete new one
        assert (output / name).read_bytes() == previous[name] or \
            np.array_equal(read_output(output / name), read_output(reference / name)), name


def test_a_write_to_a_read_only_file_system_says_so_rather_than_the_free_space(monkeypatch, tmp_path):
    """torch and ITK hide why a write failed; a read-only disk reports no free space, which misleads."""
    class ReadOnly:
        f_flag, f_bavail, f_frsize = os.ST_RDONLY, 0, 4096

    def refuse(*_):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    monkeypatch.setattr(torch, "save", refuse)
    target = tmp_path / "checkpoint_final.pth"
    with pytest.raises(SDMCError) as failed:
        save_checkpoint(target, {})
    assert str(failed.value) == (f"{target}: could not be written (PytorchStreamWriter failed writing file data/0: "
                                 "file write failed; its file system is read-only); the previous file, if any, is intact")


def test_a_full_disk_while_converting_stops_with_a_clear_error_and_a_rerun_converts_every_slice(
        data, monkeypatch, capsys, tmp_path):
    """A write that fails is the end of the run, never a slice reported as skipped (which a re-run
    would then take as done)."""
    arguments = ["-i", str(data / "release"), "-d", "4001", "-o", str(tmp_path), "-np", "1"]
    with monkeypatch.context() as full_disk:
        fill_the_disk_from_call(full_disk, sitk, "WriteImage", 7)
        assert convert_stroke2021.main(arguments) == 2
    error = error_line(capsys.readouterr().err)
    match = re.fullmatch(rf"error: {tmp_path}/\.Dataset4001_Stroke2021\.partial/\S+/(\S+\.nii\.gz): {WRITE_FAILED}",
                         error)
    assert match and match["reason"] == "No space left on device", error
    assert convert_stroke2021.main(arguments) == 0  # space freed: the run resumes and converts the rest
    report = read_json(tmp_path / "Dataset4001_Stroke2021" / "conversion_report.json")
    complete = read_json(data / "raw" / NAME / "conversion_report.json")
    assert (report["n_converted"], report["n_skipped"]) == (complete["n_converted"], complete["n_skipped"]) != (0, 0)


def test_a_full_disk_while_preprocessing_stops_with_a_clear_error_and_a_rerun_completes(data, one_thread,
                                                                                       monkeypatch, capsys, tmp_path):
    for variable, folder in folders(data, SDMC_preprocessed=tmp_path).items():
        monkeypatch.setenv(variable, str(folder))
    arguments = [*PREPROCESSING[:-1], "1"]  # one process: the failing writer is this process's
    with monkeypatch.context() as full_disk:
        fill_the_disk_from_call(full_disk, np, "save", 5)
        assert plan_and_preprocess.main(arguments) == 2
    error = error_line(capsys.readouterr().err)
    match = re.fullmatch(rf"error: {tmp_path / NAME}/\S+/(\S+\.npy): {WRITE_FAILED}", error)
    assert match and match["reason"] == "No space left on device", error
    assert not hidden_files(tmp_path)
    assert plan_and_preprocess.main(arguments) == 0  # space freed: the rest is preprocessed
    assert not hidden_files(tmp_path)


# A file size limit (RLIMIT_FSIZE) makes the OS refuse writes as a full disk does: what torch and
# SimpleITK then do, the package must catch.
def test_a_write_that_fails_inside_torch_is_a_clear_error_and_keeps_the_checkpoints(data, server, tmp_path):
    """torch reports the failure as a RuntimeError that does not say why."""
    results = folders(data, SDMC_results=tmp_path)
    fold = tmp_path / NAME / MODEL / "fold_0"
    assert server.run(TRAIN, TRAINING, results, kill={"at_call": TRAIN_STEP, "n": 2 * ITERATIONS + 1}).killed
    epochs = {path.name: load_checkpoint(path)["epoch"] for path in fold.glob("checkpoint_*.pth")}
    limit = min(path.stat().st_size for path in fold.glob("checkpoint_*.pth")) // 2
    run = server.run(TRAIN, [*TRAINING, "--c"], results, file_size_limit=limit)
    assert run.returncode == 2, run.output[-3000:]
    assert re.fullmatch(rf"error: {fold}/checkpoint_\w+\.pth: {WRITE_FAILED}", error_line(run.output))
    assert {path.name: load_checkpoint(path)["epoch"] for path in fold.glob("checkpoint_*.pth")} == epochs
    assert epochs["checkpoint_latest.pth"] == 2 and not hidden_files(fold)


def test_a_write_that_simpleitk_does_not_report_is_a_clear_error_not_a_truncated_label_map(data, server,
                                                                                          reference_prediction, tmp_path):
    """SimpleITK reports nothing and leaves a truncated NIfTI file, which even reads back."""
    # the same model and options as the reference run: its record is kept (a new one would not fit the limit)
    shutil.copy(reference_prediction[0] / predict.RUN_RECORD, tmp_path / predict.RUN_RECORD)
    run = server.run(PREDICT, predict_arguments(data, tmp_path), folders(data, SDMC_results=data / "reference_results"),
                     file_size_limit=200)  # a label map takes about 500 bytes
    assert run.returncode == 2, run.output[-3000:]
    match = re.fullmatch(rf"error: {tmp_path}/\S+\.nii\.gz: {WRITE_FAILED}", error_line(run.output))
    assert match and match["reason"] == "the file is incomplete although SimpleITK reported no error"
    assert visible_files(tmp_path) == {predict.RUN_RECORD} and not hidden_files(tmp_path)


# --- one training per fold folder -----------------------------------------------------------------
def test_a_second_training_of_a_fold_is_refused_while_the_first_runs_and_the_first_completes(
        data, server, reference_training, one_thread, monkeypatch, tmp_path):
    """The first runs here, held at its first training step until the second, a process of its own, has ended."""
    for variable, folder in folders(data, SDMC_results=tmp_path).items():
        monkeypatch.setenv(variable, str(folder))
    fold = tmp_path / NAME / MODEL / "fold_0"
    at_first_step, second_ended = threading.Event(), threading.Event()
    train_step = Trainer.train_step

    def held_at_first_step(self, batch):
        at_first_step.set()
        second_ended.wait(timeout=300)
        return train_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", held_at_first_step)
    with ThreadPoolExecutor(1) as executor:
        first = executor.submit(run_training.main, TRAINING)
        try:
            assert at_first_step.wait(timeout=300), first.exception(timeout=0) if first.done() else "not started"
            second = server.run(TRAIN, TRAINING, folders(data, SDMC_results=tmp_path))
        finally:
            second_ended.set()
        assert first.result(timeout=300) == 0
    assert second.returncode == 2, second.output[-3000:]
    assert re.fullmatch(rf"error: {fold}: another training of this fold is running \(pid {os.getpid()} on "
                        rf"{re.escape(socket.gethostname())}, started \S+: .+\); wait for it to end, or stop it, "
                        rf"before training this fold again", error_line(second.output)), error_line(second.output)
    check_training_result(fold, reference_training[0])
    assert not (fold / LOCK_FILE).exists()


def test_a_lock_left_by_a_killed_training_does_not_block_the_next(data, server, reference_training, tmp_path):
    results = folders(data, SDMC_results=tmp_path)
    fold = tmp_path / NAME / MODEL / "fold_0"
    assert server.run(TRAIN, TRAINING, results, kill={"at_call": TRAIN_STEP, "n": ITERATIONS + 1}).killed
    left = json.loads((fold / LOCK_FILE).read_text())
    run = server.run(TRAIN, [*TRAINING, "--c"], results)
    assert run.returncode == 0, run.output[-3000:]
    assert (f"{fold / LOCK_FILE}: left by pid {left['pid']} on {left['host']}, started {left['started']}: "
            f"{left['command']}, which ended without removing it (killed or crashed); the kernel released its lock "
            f"when it ended, so this training takes the fold folder over") in run.output
    check_training_result(fold, reference_training[0])
    assert not (fold / LOCK_FILE).exists()


def test_the_worker_processes_of_a_killed_training_do_not_keep_its_fold_locked(tmp_path):
    """Data loader workers are forked with the lock file open: they must not hold the lock once their
    parent is killed (as by the OOM killer, which kills one process, not its group)."""
    training = textwrap.dedent(f"""
        import os, signal, time
        from pathlib import Path
        from sdmcunet.training.fold_lock import fold_lock
        with fold_lock(Path({str(tmp_path)!r})):
            worker = os.fork()
            if worker == 0:  # a worker, its output away from the pipes the test waits to close
                for output in (1, 2):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), output)
                time.sleep(60)
                os._exit(0)
            print(worker, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", training], capture_output=True, text=True, timeout=120)
    worker = int(killed.stdout)
    try:
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        os.kill(worker, 0)  # the worker lives on
        with fold_lock(tmp_path):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        os.kill(worker, signal.SIGKILL)


def test_training_on_a_file_system_without_file_locks_goes_on_and_says_so(monkeypatch, tmp_path, caplog):
    def no_locks(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with fold_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).is_file()
    assert (f"{tmp_path / LOCK_FILE}: this file system does not lock files (No locks available): a second training "
            f"of this fold at the same time would not be noticed") in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()
