"""`sdmc_train ID 2d FOLD -tr nnUNetTrainer`: nnU-Net v2 on this project's data and folds, its validation in this
project's results, where sdmc_evaluate, sdmc_find_best_configuration (ensembles with the other trainers included)
and sdmc_report find it.

By default (CI) nnU-Net plans and preprocesses a synthetic dataset for real, and a validation folder in nnU-Net's
format, made here from the references, is brought into the results. nnU-Net's training and validation themselves
(two iterations on the CPU, then --c and --val; a few minutes on two cores) run on request:

    .venv/bin/pytest -q tests/test_nnunet_trainer.py --run-nnunet
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_preprocessed_dataset, paths_set
from test_bad_input import refused

from sdmcunet.ensembling import ensemble
from sdmcunet.evaluation import evaluate_predictions, find_best_configuration
from sdmcunet.evaluation.find_best_configuration import Candidate, inference_instructions
from sdmcunet.experiment_planning.plans import load_plans, plans_path
from sdmcunet.experiment_planning.plans_manager import PlansManager
from sdmcunet.imageio import read_label_slice_with_geometry, write_label_map
from sdmcunet.imageio.probabilities import load_probabilities
from sdmcunet.inference import predict
from sdmcunet.reporting import report
from sdmcunet.results import layout
from sdmcunet.results.checkpoints import load_checkpoint
from sdmcunet.results.history import TrainingHistory
from sdmcunet.results.trained_model import TrainedModel
from sdmcunet.training import run_training
from sdmcunet.training import trainers
from sdmcunet.training.trainers import TRAINERS
from sdmcunet.training.trainers.nnunet import NnunetFolders, NnunetPlans
from sdmcunet.utils.files import read_json

DATASET = "Dataset2021_Stroke2021"
NNUNET_MODEL = "nnUNetTrainer__nnUNetPlans_cpu__2d"  # the dataset is planned for the CPU
TRAIN = ["2021", "2d", "0", "-tr", "nnUNetTrainer", "-device", "cpu", "-num_loader_workers", "0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 synthetic patients, planned for the CPU, whose fold 0 validates on 3 slices (an ischemic, a hemorrhagic and a
    lesion-free one: nnU-Net predicts every validation case, slowly on a CPU)."""
    root = tmp_path_factory.mktemp("nnunet")
    preprocessed = make_preprocessed_dataset(root, 5, 3, 64, "--cpu")
    cases = read_json(preprocessed / layout.FINGERPRINT_FILE)["cases"]
    labels = {case: set(np.unique(read_label_slice_with_geometry(reference(preprocessed, case))[0]))
              for case in cases}
    val = [next(case for case in cases if labels[case] == wanted) for wanted in ({0, 1}, {0, 2}, {0})]
    (preprocessed / "splits_final.json").write_text(json.dumps(
        [{"train": [case for case in cases if case not in val], "val": val}]))
    return preprocessed


@pytest.fixture(scope="module")
def prepared(dataset) -> Path:
    """The dataset with nnU-Net's planning and preprocessing of it (nnunetv2 installed)."""
    pytest.importorskip("nnunetv2")
    root = dataset.parents[1]
    with paths_set(SDMC_raw=root / "raw", SDMC_preprocessed=root / "preprocessed", SDMC_results=root / "results"), \
            paths_set(nnUNet_def_n_proc="1", **NnunetFolders.of_this_project().environment()):
        delegate(dataset).prepare_nnunet_dataset()
    return dataset


@pytest.fixture
def results(dataset, tmp_path, monkeypatch) -> Path:
    """This test's results folder beside the module's raw and preprocessed data; nnU-Net's variables restored after."""
    monkeypatch.setenv("SDMC_raw", str(dataset.parents[1] / "raw"))
    monkeypatch.setenv("SDMC_preprocessed", str(dataset.parent))
    monkeypatch.setenv("SDMC_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    for name, folder in NnunetFolders.of_this_project().environment().items():
        monkeypatch.setenv(name, folder)
    return tmp_path / "results"


def reference(preprocessed: Path, case: str) -> Path:
    return layout.references_folder(preprocessed) / f"{case}.nii.gz"


def delegate(preprocessed: Path, fold: int | str = 0):
    plans = load_plans(plans_path(preprocessed, "sdmcPlans"))
    return TRAINERS.get("nnUNetTrainer")(plans, "2d", fold, preprocessed, "cpu")


def validation_cases(preprocessed: Path) -> list[str]:
    return read_json(preprocessed / "splits_final.json")[0]["val"]


def nnunet_folder(results: Path) -> Path:
    return results / "nnUNet_results" / DATASET / NNUNET_MODEL


def write_nnunet_validation(preprocessed: Path, results: Path) -> Path:
    """What nnU-Net's validation of fold 0 writes, predicting every reference exactly: per case the label map (a 2D
    image with the reference's geometry) and float32 probabilities (classes, 1, rows, columns); with the plans
    nnU-Net copies into its model folder when it trains."""
    folder = layout.validation_folder(layout.fold_folder(nnunet_folder(results), 0))
    for case in validation_cases(preprocessed):
        labels, geometry = read_label_slice_with_geometry(reference(preprocessed, case))
        write_label_map(labels, folder / f"{case}.nii.gz", geometry)
        probabilities = np.full((3, 1, *labels.shape), 0.05, dtype=np.float32)
        np.put_along_axis(probabilities, labels[None, None].astype(np.int64), 0.9, axis=0)
        np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities)
    shutil.copyfile(preprocessed.parent / "nnUNet_preprocessed" / DATASET / "nnUNetPlans_cpu.json",
                    nnunet_folder(results) / "plans.json")
    return folder


def train_unet(fold: str = "0") -> None:
    assert run_training.main(["2021", "2d", fold, "-tr", "UNetTrainer", "--npz", "--epochs", "1",
                              "--iterations_per_epoch", "1", "-num_loader_workers", "0"]) == 0


def test_nnunet_plans_and_preprocesses_the_dataset_once_with_this_projects_splits(prepared, results):
    nnunet = prepared.parent / "nnUNet_preprocessed" / DATASET
    plans = nnunet / "nnUNetPlans_cpu.json"
    identifier = read_json(plans)["configurations"]["2d"]["data_identifier"]
    for case in read_json(prepared / layout.FINGERPRINT_FILE)["cases"]:
        assert (nnunet / identifier / f"{case}.pkl").is_file()
        assert (nnunet / "gt_segmentations" / f"{case}.nii.gz").read_bytes() == reference(prepared, case).read_bytes()
    assert read_json(nnunet / "splits_final.json") == read_json(prepared / "splits_final.json")
    made = plans.stat().st_mtime_ns
    delegate(prepared).prepare_nnunet_dataset()  # complete: not made again
    assert plans.stat().st_mtime_ns == made


def test_nnunet_plans_for_the_hardware_of_this_projects_plans(dataset):
    """CPU plans: nnU-Net's planner at a CPU-sized memory target under its own plans name; GPU plans (whatever their
    target): nnU-Net's default plans, as published comparisons train them."""
    plans = PlansManager(load_plans(plans_path(dataset, "sdmcPlans")))
    assert plans.compute_target["device"] == "cpu"
    assert NnunetPlans.for_plans(plans) == NnunetPlans("nnUNetPlans_cpu", 0.15)
    for target in (None, 8.0, 40.0):
        plans.content["compute_target"] = {"device": "cuda", "gpu_memory_target_gb": target}
        assert NnunetPlans.for_plans(plans) == NnunetPlans("nnUNetPlans", None)


def test_a_validation_of_nnunet_comes_into_this_projects_results(prepared, results):
    write_nnunet_validation(prepared, results)
    trainer = delegate(prepared)
    trainer.record_fold(TrainingHistory(), {})
    trainer.import_validation()
    model = TrainedModel.find(2021, "nnUNetTrainer", "sdmcPlans", "2d")
    assert model.folder.name == "nnUNetTrainer__sdmcPlans__2d"
    assert [fold.name for fold in model.finished_folds()] == ["0"]
    assert (model.folder / "nnUNetPlans_cpu.json").is_file() and model.plans.plans_name == "sdmcPlans"
    record = load_checkpoint(model.fold(0).checkpoint, "nnUNetTrainer")["nnunet"]
    assert record["checkpoint"] == str(nnunet_folder(results).resolve() / "fold_0" / "checkpoint_final.pth")
    for case in validation_cases(prepared):
        expected, geometry = read_label_slice_with_geometry(reference(prepared, case))
        labels, written = read_label_slice_with_geometry(model.validation_folder(0) / f"{case}.nii.gz")
        assert np.array_equal(labels, expected) and written == geometry
        probabilities = load_probabilities(model.validation_folder(0) / f"{case}.npz")
        assert probabilities.dtype == np.float16 and probabilities.shape == (3, *expected.shape)
    assert read_json(model.validation_folder(0) / "summary.json")["stroke2021"]["DSC"]["Mean"] == 1.0

    # as any model: evaluated, compared with a UNet of the same fold and ensembled with it
    train_unet()
    assert evaluate_predictions.main(["-d", "2021", "-tr", "nnUNetTrainer", "-np", "1"]) == 0
    assert find_best_configuration.main(["-d", "2021", "-f", "0", "-np", "1"]) == 0
    choice = read_json(results / DATASET / find_best_configuration.RESULT_FILE)
    assert {tuple(candidate["members"]) for candidate in choice["candidates"]} == {
        ("UNetTrainer",), ("nnUNetTrainer",), ("UNetTrainer", "nnUNetTrainer")}
    assert choice["best"]["members"] == ["nnUNetTrainer"]  # it predicts every reference
    instructions = (results / DATASET / find_best_configuration.INSTRUCTIONS_FILE).read_text()
    assert "sdmc_predict" not in instructions.split("\n\n")[1]
    assert (f"nnUNet_results={nnunet_folder(results).parents[1].resolve()} nnUNetv2_predict -i INPUT_FOLDER "
            f"-o OUTPUT_FOLDER -d 2021 -c 2d -f 0 -tr nnUNetTrainer -p nnUNetPlans_cpu\n") in instructions


def test_the_instructions_of_an_ensemble_with_nnunet_convert_its_predictions_for_sdmc_ensemble(dataset, results):
    folders = NnunetFolders.of_this_project().environment()
    nnunet, unet = (TrainedModel(results / DATASET / f"{trainer}__sdmcPlans__2d") for trainer in
                    ("nnUNetTrainer", "UNetTrainer"))
    for model in (nnunet, unet):  # as trained: each with its plans, whose compute target names nnU-Net's plans
        model.folder.mkdir(parents=True)
        shutil.copyfile(plans_path(dataset, "sdmcPlans"), model.folder / layout.PLANS_FILE)
    best = Candidate("ensemble", (nnunet, unet), results, [], {"stroke2021": {"DSC": {"Mean": 0.5}}})
    lines = inference_instructions(best, [0, 1], results / "postprocessing.json", False).splitlines()
    assert lines[3:7] == [
        " ".join(f"{name}={folder}" for name, folder in folders.items()) + " nnUNetv2_predict -i INPUT_FOLDER -o "
        "OUTPUT_FOLDER_MODEL_1_NNUNET -d 2021 -c 2d -f 0 1 -tr nnUNetTrainer -p nnUNetPlans_cpu --save_probabilities",
        "python -m sdmcunet.training.trainers.nnunet_v2 -i OUTPUT_FOLDER_MODEL_1_NNUNET -o OUTPUT_FOLDER_MODEL_1",
        "sdmc_predict -i INPUT_FOLDER -o OUTPUT_FOLDER_MODEL_2 -d 2021 -tr UNetTrainer -f 0 1 -p sdmcPlans -c 2d "
        "--save_probabilities",
        "sdmc_ensemble -i OUTPUT_FOLDER_MODEL_1 OUTPUT_FOLDER_MODEL_2 -o OUTPUT_FOLDER"]


def test_nnunet_predictions_convert_into_what_sdmc_ensemble_reads(prepared, results, tmp_path):
    from sdmcunet.training.trainers import nnunet_v2

    predicted = write_nnunet_validation(prepared, results)  # nnUNetv2_predict writes the same files, and dataset.json
    shutil.copyfile(prepared / "dataset.json", predicted / "dataset.json")
    assert nnunet_v2.main(["-i", str(predicted), "-o", str(tmp_path / "converted")]) == 0
    train_unet()
    unet = results / DATASET / "UNetTrainer__sdmcPlans__2d" / "fold_0" / "validation"
    assert ensemble.main(["-i", str(tmp_path / "converted"), str(unet), "-o", str(tmp_path / "ensemble"),
                          "-np", "1"]) == 0
    assert sorted(path.name for path in (tmp_path / "ensemble").glob("*.nii.gz")) == sorted(
        f"{case}.nii.gz" for case in validation_cases(prepared))


def test_sdmc_predict_and_sdmc_report_take_the_nnunet_model(prepared, results, capsys):
    write_nnunet_validation(prepared, results)
    trainer = delegate(prepared)
    trainer.record_fold(TrainingHistory([1.0], [0.9], [[0.1, 0.2]], [0.15], [0.01], [3.0]), {})
    trainer.import_validation()
    code = predict.main(["-i", str(prepared.parents[1] / "raw" / DATASET / "imagesTr"), "-o", str(results / "out"),
                         "-d", "2021", "-tr", "nnUNetTrainer", "-device", "cpu"])
    refused(capsys, code, "nnUNetTrainer's networks are nnU-Net's", "nnUNetv2_predict -i INPUT_FOLDER -o OUTPUT_FOLDER "
            "-d 2021 -c 2d -f 0 1 2 3 4 -tr nnUNetTrainer -p nnUNetPlans_cpu")
    assert report.main(["-d", "2021"]) == 0
    assert "nnUNetTrainer: 1 fold (0) finished, 1 fold (0) with a validation summary" in (
        results / DATASET / "report" / "report.md").read_text()


# --- refusals ----------------------------------------------------------------------------------------

def test_without_nnunetv2_the_trainer_names_the_extra_that_installs_it(dataset, results, monkeypatch, capsys):
    """nnunetv2 uninstalled, as the interpreter sees it: no module of it imported, and `import nnunetv2` failing."""
    for name in [name for name in sys.modules if name.split(".")[0] == "nnunetv2"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # `import nnunetv2...` raises ImportError
    monkeypatch.delitem(sys.modules, "sdmcunet.training.trainers.nnunet_v2", raising=False)
    monkeypatch.delattr(trainers, "nnunet_v2", raising=False)
    refused(capsys, run_training.main(TRAIN), "-tr nnUNetTrainer needs nnU-Net v2",
            "pip install 'sdmcunet[nnunet]'")
    assert not (results / DATASET).exists()


def test_nnunet_trains_in_one_process(dataset, results, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # a process of `-num_gpus 2` (torchrun)
    refused(capsys, run_training.main(TRAIN), "nnUNetTrainer trains in one process", "nnUNetv2_train ... -num_gpus N")


def other_splits(nnunet: Path, results: Path) -> Path:
    splits = nnunet / "splits_final.json"
    folds = read_json(splits)
    folds[0]["train"], folds[0]["val"] = folds[0]["train"][3:], folds[0]["train"][:3] + folds[0]["val"]
    splits.write_text(json.dumps(folds))
    return splits


def other_configuration(nnunet: Path, results: Path) -> Path:
    plans = read_json(nnunet / "nnUNetPlans_cpu.json")
    plans["configurations"]["2d"]["patch_size"] = [32, 32]
    path = nnunet_folder(results) / "plans.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(plans))
    return path


def earlier_training(nnunet: Path, results: Path) -> Path:
    path = nnunet_folder(results) / "fold_0" / "checkpoint_final.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"nnU-Net's")
    return path.parent


@pytest.mark.parametrize("make, phrase", [
    (other_splits, "nnU-Net's splits differ from this project's"),
    (other_configuration, "nnU-Net results of another dataset or configuration"),
    (earlier_training, "holds nnU-Net's checkpoint_final.pth of an earlier training of this fold; continue it with "
                       "--c"),
])
def test_nnunet_folders_of_other_splits_plans_or_trainings_are_refused(prepared, results, capsys, make, phrase):
    nnunet = prepared.parent / "nnUNet_preprocessed" / DATASET
    splits = (nnunet / "splits_final.json").read_bytes()
    try:
        named = make(nnunet, results)
        refused(capsys, run_training.main(TRAIN), f"{named}: ", phrase)
    finally:
        (nnunet / "splits_final.json").write_bytes(splits)
    assert not (results / DATASET / "nnUNetTrainer__sdmcPlans__2d" / "fold_0" / "checkpoint_final.pth").exists()


# --- nnU-Net's training itself (--run-nnunet) ------------------------------------------------------------

def sdmc_train(*options: str) -> None:
    """`sdmc_train` in its own process, as users run it: nnU-Net's worker pools start with `spawn` and take their
    size from the environment when nnunetv2 is first imported."""
    completed = subprocess.run([sys.executable, "-m", "sdmcunet.training.run_training", *TRAIN, *options],
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


def history(model: TrainedModel) -> TrainingHistory:
    return model.fold(0).history()


def test_nnunet_trains_validates_continues_and_is_compared_with_a_unet(prepared, results, request):
    if not request.config.getoption("--run-nnunet"):
        pytest.skip("nnU-Net's training takes minutes on a CPU: --run-nnunet runs it")
    sdmc_train("--epochs", "1", "--iterations_per_epoch", "2")
    model = TrainedModel.find(2021, "nnUNetTrainer", "sdmcPlans", "2d")
    record = load_checkpoint(model.fold(0).checkpoint, "nnUNetTrainer")["nnunet"]
    assert Path(record["checkpoint"]).is_file()
    assert record["schedule"] == {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1}
    assert history(model).epochs == 1
    summary = model.validation_folder(0) / "summary.json"
    assert "stroke2021" in read_json(summary)
    for case in validation_cases(prepared):
        labels, geometry = read_label_slice_with_geometry(model.validation_folder(0) / f"{case}.nii.gz")
        assert geometry == read_label_slice_with_geometry(reference(prepared, case))[1]
        assert load_probabilities(model.validation_folder(0) / f"{case}.npz").shape == (3, *labels.shape)

    sdmc_train("--c", "--epochs", "2", "--iterations_per_epoch", "2")  # from nnU-Net's checkpoint, one more epoch
    assert history(model).epochs == 2
    summary.unlink()
    sdmc_train("--val")
    assert summary.is_file()

    train_unet()
    assert evaluate_predictions.main(["-d", "2021", "-tr", "nnUNetTrainer", "-np", "1"]) == 0
    assert find_best_configuration.main(["-d", "2021", "-f", "0", "-np", "1"]) == 0
    choice = read_json(results / DATASET / find_best_configuration.RESULT_FILE)
    assert ["UNetTrainer", "nnUNetTrainer"] in [candidate["members"] for candidate in choice["candidates"]]
