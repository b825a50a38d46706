"""The bad-input suite: one test per row of docs/bad_input.md (the table names the test of each row).

A row feeds one command one bad input, in-process through its `main`, and checks what the user
gets: exit code 2 for a user mistake, a message from `error: ` on naming the file and what is
wrong, no traceback, nothing half-written (no temporary `.part` file or staging folder, no
partial output) and the user's inputs unchanged. The few rows whose right answer is to go on (a
conversion skips a broken slice of thousands and reports it) check that instead.

Unwritable outputs: the tests run as root, for whom permission bits do not stop a write, so an
output is made unwritable by a regular file standing where its parent folder should be: every
file system refuses to create anything below a file, whoever asks (ENOTDIR).
"""

import hashlib
import io
import json
import os
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
import yaml
from conftest import make_preprocessed_dataset, paths_set
from fake_results import label_map, write_label_maps
from PIL import Image
from pydicom.data import get_testdata_file

from sdmcunet.dataset_conversion import convert_stroke2021, download_stroke2021, synthetic
from sdmcunet.dataset_conversion.synthetic import make_synthetic_dataset
from sdmcunet.ensembling import ensemble
from sdmcunet.evaluation import evaluate_predictions, find_best_configuration
from sdmcunet.experiment_planning import plan_and_preprocess, verify_dataset
from sdmcunet.imageio import read_nifti, read_png, write_image, write_label_map
from sdmcunet.inference import predict
from sdmcunet.labels import LABELS
from sdmcunet.postprocessing import remove_small_components
from sdmcunet.raw_dataset import make_dataset_json
from sdmcunet.reporting import report
from sdmcunet.training import run_training
from sdmcunet.results.checkpoints import load_checkpoint, save_checkpoint
from sdmcunet.utils.files import atomic_write_json
from sdmcunet.weights import convert as convert_weights
from sdmcunet.weights import download as download_weights
from sdmcunet.weights import import_reference
from sdmcunet.weights.standin import sdmc_seg_config, sdseg_state_dict, write_compvis_checkpoint

DATASET = "Dataset2021_Stroke2021"
UNET_PNG = "UNetTrainer__sdmcPlans__2d"  # reads the organisers' PNG
UNET_CT = "UNetTrainer__sdmcCTWindowsPlans__2d"  # reads the DICOM's Hounsfield units
SHORT_TRAINING = ["--epochs", "1", "--iterations_per_epoch", "2", "-num_loader_workers", "0"]


# ---------------------------------------------------------------- checks shared by the rows

def run(main, *argv) -> int:
    """A command's exit code; argparse's refusals end in SystemExit, the rest in main's return value."""
    try:
        return main([str(argument) for argument in argv])
    except SystemExit as exit:
        return exit.code


def refused(capsys, code: int, *phrases: str) -> str:
    """Check a user error (exit code 2, no traceback, the phrases in the message); returns the message."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "error: " in err, err
    message = err[err.rindex("error: "):]  # progress bars may come before it
    assert all(phrase in message for phrase in phrases), message
    return message


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file below `folder` with its modification time and content hash."""
    return {str(path.relative_to(folder)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_no_leftovers(root: Path) -> None:
    """No temporary file of an atomic write, no staging folder, no unfinished download below `root`."""
    left = [path for path in root.rglob("*") if path.name.endswith(".partial")
            or path.name.startswith(".") and any(tag in path.name for tag in (".part", ".extracting", ".converting"))]
    assert left == []


def blocked(tmp_path: Path) -> Path:
    """A folder that cannot be created: a regular file stands where its parent should be."""
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file" / "output"


def evil_pickle(marker: Path) -> object:
    """An object whose unpickling would run a shell command creating `marker`."""
    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    return RunsCode()


def nan_nifti(path: Path, array: np.ndarray) -> None:
    """`array` as float32 NIfTI with a NaN and an infinity, really stored (nibabel reads them back)."""
    spoiled = array.astype(np.float32)
    spoiled.flat[0], spoiled.flat[-1] = np.nan, np.inf
    write_image(spoiled, path)
    stored = np.asarray(nibabel.load(path).dataobj)
    assert np.isnan(stored).sum() == 1 and np.isinf(stored).sum() == 1


# ---------------------------------------------------------------- data

@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A synthetic TEKNOFEST release of 3 patients at 64 px (tests damage a copy)."""
    root = tmp_path_factory.mktemp("release")
    make_synthetic_dataset(root, n_patients=3, seed=5, size=64, progress=False)
    return root


@pytest.fixture
def release_copy(release, tmp_path) -> Path:
    return Path(shutil.copytree(release, tmp_path / "release"))


def first_slice(release: Path) -> tuple[Path, str]:
    """The Hemorrhagic folder of the release and the stem of its first slice."""
    folder = release / "Training" / "Hemorrhagic"
    return folder, sorted(folder.glob("PNG/*.png"))[0].stem


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """raw/, preprocessed/ and results/ of 5 synthetic patients with two UNet fold-0 models trained for
    2 iterations (with validation probabilities): one reading the PNG, one the CT's Hounsfield units."""
    root = tmp_path_factory.mktemp("trained")
    make_preprocessed_dataset(root, 5, 11, 64, "--cpu")
    with paths_set(SDMC_raw=root / "raw", SDMC_preprocessed=root / "preprocessed", SDMC_results=root / "results"):
        assert plan_and_preprocess.main(["-d", "2021", "-np", "1", "--cpu", "-pl", "SDMCCTWindowsPlanner"]) == 0
        for plans in ("sdmcPlans", "sdmcCTWindowsPlans"):
            assert run_training.main(["2021", "2d", "0", "-tr", "UNetTrainer", "-p", plans, "--npz",
                                      *SHORT_TRAINING]) == 0
    return root


@pytest.fixture
def environment(trained, monkeypatch) -> Path:
    """The trained folders as SDMC_raw, SDMC_preprocessed and SDMC_results."""
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"SDMC_{name}", str(trained / name))
    return trained


@pytest.fixture
def own_preprocessed(trained, tmp_path, monkeypatch) -> Path:
    """A copy of the preprocessed dataset for rows that spoil it, results going to tmp_path."""
    copy = shutil.copytree(trained / "preprocessed", tmp_path / "preprocessed")
    monkeypatch.setenv("SDMC_raw", str(trained / "raw"))
    monkeypatch.setenv("SDMC_preprocessed", str(copy))
    monkeypatch.setenv("SDMC_results", str(tmp_path / "results"))
    return Path(copy) / DATASET


@pytest.fixture
def own_raw(trained, tmp_path, monkeypatch) -> Path:
    """A copy of the raw dataset for rows that spoil it, preprocessing going to tmp_path."""
    copy = shutil.copytree(trained / "raw", tmp_path / "raw")
    monkeypatch.setenv("SDMC_raw", str(copy))
    monkeypatch.setenv("SDMC_preprocessed", str(tmp_path / "preprocessed"))
    return Path(copy) / DATASET


def model_copy(trained: Path, tmp_path: Path, model: str = UNET_PNG) -> Path:
    return Path(shutil.copytree(trained / "results" / DATASET / model, tmp_path / model))


def first_case(raw: Path) -> str:
    return sorted(path.name.removesuffix(".nii.gz") for path in (raw / "labelsTr").iterdir())[0]


# ================================================================ sdmc_convert_stroke2021

def truncate_dicom(folder: Path, stem: str) -> Path:
    path = folder / "DICOM" / f"{stem}.dcm"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def mr_dicom(folder: Path, stem: str) -> Path:
    path = folder / "DICOM" / f"{stem}.dcm"
    shutil.copy(get_testdata_file("MR_small.dcm"), path)
    return path


def sixteen_bit_png(folder: Path, stem: str) -> Path:
    path = folder / "PNG" / f"{stem}.png"
    Image.fromarray(read_png(path)[..., 0].astype(np.uint16) * 257).save(path)
    return path


def nan_rescale_slope(folder: Path, stem: str) -> Path:
    path = folder / "DICOM" / f"{stem}.dcm"
    dataset = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that NaN is no valid DS; the file still says it
        dataset.RescaleSlope = "NaN"
        dataset.save_as(path)
    return path


def zero_rescale_slope(folder: Path, stem: str) -> Path:
    path = folder / "DICOM" / f"{stem}.dcm"
    dataset = pydicom.dcmread(path)
    dataset.RescaleSlope = 0
    dataset.save_as(path)
    return path


def stem_in_two_classes(folder: Path, stem: str) -> Path:
    other = folder.parent / "Non-Stroke"
    for kind, suffix in (("PNG", "png"), ("DICOM", "dcm")):
        shutil.copy(folder / kind / f"{stem}.{suffix}", other / kind / f"{stem}.{suffix}")
    return other


CONVERSION_SKIPS = {  # damage: (how, what the report says)
    "truncated DICOM": (truncate_dicom, "pixel data is truncated"),
    "DICOM of another modality (MR)": (mr_dicom, "modality is MR, expected CT"),
    "16-bit PNG": (sixteen_bit_png, "a 16-bit PNG; the release's PNG and OVERLAY files are 8-bit"),
    "NaN RescaleSlope": (nan_rescale_slope, "give NaN or infinite Hounsfield units"),
    "RescaleSlope 0": (zero_rescale_slope, "RescaleSlope is 0, which would make every pixel"),
    "stem in two classes": (stem_in_two_classes, "stem appears in two classes"),
}


@pytest.mark.parametrize("damage", CONVERSION_SKIPS)
def test_convert_skips_a_broken_slice_and_reports_it(release_copy, tmp_path, capsys, damage):
    spoil, reason = CONVERSION_SKIPS[damage]
    folder, stem = first_slice(release_copy)
    damaged = spoil(folder, stem)
    n_slices = len(list(release_copy.glob("Training/*/PNG/*.png")))
    before = snapshot(release_copy)
    assert run(convert_stroke2021.main, "-i", release_copy, "-o", tmp_path / "raw", "-np", 1) == 0
    dataset = tmp_path / "raw" / DATASET
    report_file = json.loads((dataset / "conversion_report.json").read_text())
    skipped = {entry["case"]: entry["reason"] for entry in report_file["skipped"]}
    assert list(skipped) == [stem] and reason in skipped[stem]
    assert damage == "stem in two classes" or str(damaged) in skipped[stem]
    assert not (dataset / "labelsTr" / f"{stem}.nii.gz").exists()
    assert len(list((dataset / "labelsTr").iterdir())) == n_slices - (2 if damage == "stem in two classes" else 1)
    assert snapshot(release_copy) == before
    assert_no_leftovers(tmp_path)


def renamed_slice(folder: Path, stem: str, new_stem: str) -> None:
    """Every file of the slice `stem` (PNG, DICOM, OVERLAY) under the stem `new_stem`."""
    for path in folder.glob(f"*/{stem}.*"):
        path.rename(path.with_name(f"{new_stem}{path.suffix}"))


def test_convert_a_slice_with_a_legal_long_name_and_skip_a_stem_that_is_no_case_name(release_copy, tmp_path,
                                                                                     capsys):
    folder, stem = first_slice(release_copy)
    second = sorted(folder.glob("PNG/*.png"))[1].stem
    long_stem = "s" * 240  # 240 + "_0000.nii.gz" is 252 bytes: legal, but a temporary name 20 longer is not
    renamed_slice(folder, stem, long_stem)
    renamed_slice(folder, second, "..")
    assert run(convert_stroke2021.main, "-i", release_copy, "-o", tmp_path / "raw", "-np", 1) == 0
    dataset = tmp_path / "raw" / DATASET
    assert (dataset / "labelsTr" / f"{long_stem}.nii.gz").is_file()
    assert (dataset / "imagesTr" / f"{long_stem}_0001.nii.gz").is_file()
    skipped = json.loads((dataset / "conversion_report.json").read_text())["skipped"]
    assert [(entry["case"], "starts with '.'" in entry["reason"]) for entry in skipped] == [("..", True)]
    assert not [path for path in dataset.rglob("*") if path.name.startswith(".")]  # nothing of it was written


def test_convert_notes_an_unusual_rescale_slope(release_copy, tmp_path, capsys):
    folder, stem = first_slice(release_copy)
    path = folder / "DICOM" / f"{stem}.dcm"
    dataset = pydicom.dcmread(path)
    dataset.RescaleSlope = -1
    dataset.save_as(path)
    assert run(convert_stroke2021.main, "-i", release_copy, "-o", tmp_path / "raw", "-np", 1) == 0
    report_file = json.loads((tmp_path / "raw" / DATASET / "conversion_report.json").read_text())
    notes = {entry["case"]: " ".join(entry["notes"]) for entry in report_file["repaired"]}
    assert "RescaleSlope -1 is unusual for CT" in notes[stem]


def test_convert_missing_input_folder(tmp_path, capsys):
    refused(capsys, run(convert_stroke2021.main, "-i", tmp_path / "nowhere", "-o", tmp_path / "raw"),
            "nowhere", "not a folder")
    assert not (tmp_path / "raw").exists()


def test_convert_unwritable_output(release, tmp_path, capsys):
    output = blocked(tmp_path)
    refused(capsys, run(convert_stroke2021.main, "-i", release, "-o", output, "-np", 1),
            str(output), "cannot create the folder (Not a directory)")


def test_convert_into_a_folder_holding_another_dataset(release, tmp_path, capsys):
    mine = tmp_path / "raw" / DATASET
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own data")
    refused(capsys, run(convert_stroke2021.main, "-i", release, "-o", tmp_path / "raw", "-np", 1),
            str(mine), "already holds a different dataset")
    assert [path.name for path in (tmp_path / "raw").iterdir()] == [DATASET]
    assert [path.name for path in mine.iterdir()] == ["notes.txt"]


# ================================================================ sdmc_make_synthetic

def test_synthetic_into_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my own data")
    refused(capsys, run(synthetic.main, "-o", tmp_path / "mine", "--patients", 1, "--size", 64),
            "mine", "not empty and not a synthetic dataset")
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_synthetic_size_too_small(tmp_path, capsys):
    refused(capsys, run(synthetic.main, "-o", tmp_path / "out", "--size", 16), "--size >= 64", "16")
    assert not (tmp_path / "out").exists()


def test_synthetic_unwritable_output(tmp_path, capsys):
    output = blocked(tmp_path)
    refused(capsys, run(synthetic.main, "-o", output, "--patients", 1, "--size", 64),
            str(output), "cannot create the folder")


# ================================================================ sdmc_verify_dataset

def test_verify_unknown_dataset_id(tmp_path, capsys):
    refused(capsys, run(verify_dataset.main, "-d", 77), "no dataset with id 77", "Dataset077_<Name>")


def test_verify_nan_and_infinite_intensities(own_raw, capsys):
    case = first_case(own_raw)
    image = own_raw / "imagesTr" / f"{case}_0000.nii.gz"
    nan_nifti(image, read_nifti(image)[0])
    before = snapshot(own_raw)
    refused(capsys, run(verify_dataset.main, "-d", 2021, "-np", 1), str(image), "holds NaN or infinite values")
    assert snapshot(own_raw) == before


def test_verify_label_values_outside_the_labels(own_raw, capsys):
    label = own_raw / "labelsTr" / f"{first_case(own_raw)}.nii.gz"
    values, spacing = read_nifti(label)
    write_label_map(np.where(values == 0, 7, values), label, spacing)
    refused(capsys, run(verify_dataset.main, "-d", 2021, "-np", 1), str(label), "label values [7] are not in")


def test_verify_image_and_label_shapes_differ(own_raw, capsys):
    label = own_raw / "labelsTr" / f"{first_case(own_raw)}.nii.gz"
    values, spacing = read_nifti(label)
    write_label_map(values[:-3], label, spacing)
    refused(capsys, run(verify_dataset.main, "-d", 2021, "-np", 1), "_0000.nii.gz: shape", "differs from its label's")


def png_raw_dataset(raw: Path, label: np.ndarray) -> Path:
    """A one-case raw dataset with the file ending .png (nnU-Net's 2D natural-image layout)."""
    folder = raw / "Dataset077_Pictures"
    atomic_write_json(folder / "dataset.json", make_dataset_json({0: "PNG"}, LABELS, 1, ".png"))
    write_label_map(np.zeros(label.shape[:2], np.uint8), folder / "imagesTr" / "slice_0000.png")
    (folder / "labelsTr").mkdir()
    Image.fromarray(label).save(folder / "labelsTr" / "slice.png")
    return folder


def test_verify_colour_label_map(tmp_path, capsys):
    colours = np.zeros((8, 8, 3), np.uint8)
    colours[2:5, 2:5] = (0, 255, 0)  # a hemorrhage painted green: channel 0 would read as background
    folder = png_raw_dataset(tmp_path / "SDMC_raw", colours)
    refused(capsys, run(verify_dataset.main, "-d", 77, "-np", 1), str(folder / "labelsTr" / "slice.png"),
            "a label map must be a grey PNG", "3 channels")


def test_verify_dataset_json_field_of_the_wrong_type(own_raw, capsys):
    content = json.loads((own_raw / "dataset.json").read_text())
    content["labels"] = ["background", "ischemic", "hemorrhagic"]
    (own_raw / "dataset.json").write_text(json.dumps(content))
    refused(capsys, run(verify_dataset.main, "-d", 2021), str(own_raw / "dataset.json"), "labels", "malformed")


def test_verify_nifti_with_an_uncompressed_twin(own_raw, capsys):
    image = own_raw / "imagesTr" / f"{first_case(own_raw)}_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4), np.int16)), str(image.with_suffix("")))
    refused(capsys, run(verify_dataset.main, "-d", 2021, "-np", 1), str(image),
            f"{image.with_suffix('').name} lies beside it and would be read instead")


# ================================================================ sdmc_plan_and_preprocess, sdmc_preprocess

def test_plan_unknown_dataset_id(tmp_path, capsys):
    refused(capsys, run(plan_and_preprocess.main, "-d", 77, "-np", 1), "no dataset with id 77")
    assert not (tmp_path / "SDMC_preprocessed").exists()


def test_plan_nan_intensities_without_integrity_check(own_raw, tmp_path, capsys):
    image = own_raw / "imagesTr" / f"{first_case(own_raw)}_0001.nii.gz"
    nan_nifti(image, read_nifti(image)[0])
    refused(capsys, run(plan_and_preprocess.main, "-d", 2021, "-np", 1, "--cpu"), str(image), "holds NaN or infinite")
    assert not (tmp_path / "preprocessed").exists()  # no fingerprint or plans computed over zeros


def test_plan_holdout_fraction_out_of_range(own_raw, capsys):
    before = snapshot(own_raw)
    refused(capsys, run(plan_and_preprocess.main, "-d", 2021, "-np", 1, "--holdout_fraction", 1.5),
            "between 0 and 1", "1.5")
    assert snapshot(own_raw) == before


def test_plan_holdout_record_naming_a_path(own_raw, tmp_path, capsys):
    record = own_raw / "holdout.json"
    record.write_text(json.dumps({"fraction": 0.2, "seed": 1, "cases": ["../../x/evil_dir/x"]}))
    before = snapshot(own_raw.parent)
    refused(capsys, run(plan_and_preprocess.main, "-d", 2021, "-np", 1, "--cpu", "--holdout_fraction", 0.2),
            str(record), "invalid case name", "path separator")
    assert snapshot(own_raw.parent) == before and not list(tmp_path.rglob("evil_dir"))


def test_plan_unwritable_preprocessed_folder(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDMC_raw", str(trained / "raw"))
    monkeypatch.setenv("SDMC_preprocessed", str(blocked(tmp_path)))
    refused(capsys, run(plan_and_preprocess.main, "-d", 2021, "-np", 1, "--cpu"), "cannot create the folder")


def test_preprocess_missing_plans(own_preprocessed, capsys):
    refused(capsys, run(plan_and_preprocess.preprocess_main, "-d", 2021, "-p", "myPlans", "-np", 1),
            str(own_preprocessed / "myPlans.json"), "plans not found")


def test_preprocess_plans_not_json(own_preprocessed, capsys):
    (own_preprocessed / "myPlans.json").write_text('{"plans_name": "myPlans",')
    refused(capsys, run(plan_and_preprocess.preprocess_main, "-d", 2021, "-p", "myPlans", "-np", 1),
            str(own_preprocessed / "myPlans.json"), "not valid JSON")


PLANS_EDITS = {  # a field of the wrong JSON type: (edit of the plans, what the message says)
    "top level is a list": (lambda plans: [plans], "expected a JSON object, found a list"),
    "labels a list": (lambda plans: {**plans, "labels": list(plans["labels"])}, "labels must map label names"),
    "configurations a list": (lambda plans: {**plans, "configurations": ["2d"]}, "configurations must map"),
    "input_channels not objects": (lambda plans: edit_configuration(plans, input_channels=["PNG"]),
                                   "input_channels must be a list of objects"),
    "families a list": (lambda plans: edit_configuration(plans, families=["baseline"]), "families must map"),
    "crop_to_head a string": (lambda plans: edit_configuration(plans, crop_to_head="yes"), "crop_to_head must be"),
    "schedule a list": (lambda plans: edit_family(plans, schedule=[]), "families.baseline: schedule must be an object"),
    "std a string": (lambda plans: edit_configuration(plans, input_channels=[
        {"source_channel": 1, "normalization": "z_score", "mean": 0, "std": "1"}]), "z_score needs a numeric mean"),
    "data_identifier a path": (lambda plans: edit_configuration(plans, data_identifier="../../elsewhere"),
                               "data_identifier must be a plain name"),
    "image size the networks cannot run": (lambda plans: edit_configuration(plans, image_size=[200, 200]),
                                           "image_size must be two positive multiples of 32"),
    "attention at latent sizes (not LDM's rates)": (
        lambda plans: edit_denoiser(plans, attention_resolutions=[16]), "attention_resolutions are LDM's downsampling"),
    "unknown baseline loss": (lambda plans: edit_family(plans, loss="focal"),
                              "families.baseline: loss must be one of ('dice_ce', 'dice', 'ce'), got 'focal'"),
}


def edit_configuration(plans: dict, **changes) -> dict:
    plans = json.loads(json.dumps(plans))
    plans["configurations"]["2d"].update(changes)
    return plans


def edit_family(plans: dict, **changes) -> dict:
    plans = json.loads(json.dumps(plans))
    plans["configurations"]["2d"]["families"]["baseline"].update(changes)
    return plans


def edit_denoiser(plans: dict, **changes) -> dict:
    plans = json.loads(json.dumps(plans))
    plans["configurations"]["2d"]["families"]["sdmc"]["networks"]["denoiser"].update(changes)
    return plans


@pytest.mark.parametrize("edit", PLANS_EDITS)
def test_preprocess_plans_field_of_the_wrong_type(own_preprocessed, capsys, edit):
    change, phrase = PLANS_EDITS[edit]
    plans = json.loads((own_preprocessed / "sdmcPlans.json").read_text())
    (own_preprocessed / "myPlans.json").write_text(json.dumps(change({**plans, "plans_name": "myPlans"})))
    before = snapshot(own_preprocessed)
    refused(capsys, run(plan_and_preprocess.preprocess_main, "-d", 2021, "-p", "myPlans", "-np", 1),
            f"{own_preprocessed / 'myPlans.json'}: invalid plans", phrase)
    assert snapshot(own_preprocessed) == before


def test_preprocess_splits_with_unknown_cases(own_preprocessed, capsys):
    splits = json.loads((own_preprocessed / "splits_final.json").read_text())
    splits[1]["val"].append("no_such_case")
    (own_preprocessed / "splits_final.json").write_text(json.dumps(splits))
    before = snapshot(own_preprocessed)
    refused(capsys, run(plan_and_preprocess.preprocess_main, "-d", 2021, "-np", 1),
            str(own_preprocessed / "splits_final.json"), "fold 1: unknown cases ['no_such_case']")
    assert snapshot(own_preprocessed) == before


# ================================================================ sdmc_train

def test_train_unknown_dataset_id(environment, capsys):
    refused(capsys, run(run_training.main, 77, "2d", 0, "-tr", "UNetTrainer"), "no dataset with id 77")


def test_train_fold_that_does_not_exist(environment, capsys):
    refused(capsys, run(run_training.main, 2021, "2d", 7, "-tr", "UNetTrainer"),
            "fold 7 does not exist", "splits_final.json has folds 0..4")


def test_train_splits_of_the_wrong_shape(own_preprocessed, tmp_path, capsys):
    (own_preprocessed / "splits_final.json").write_text(json.dumps({"train": [], "val": []}))
    refused(capsys, run(run_training.main, 2021, "2d", 0, "-tr", "UNetTrainer", *SHORT_TRAINING),
            str(own_preprocessed / "splits_final.json"), "expected a list of {'train'")
    assert not (tmp_path / "results").exists()


def test_train_splits_with_unknown_cases(own_preprocessed, tmp_path, capsys):
    splits = json.loads((own_preprocessed / "splits_final.json").read_text())
    splits[0]["train"].append("no_such_case")
    (own_preprocessed / "splits_final.json").write_text(json.dumps(splits))
    refused(capsys, run(run_training.main, 2021, "2d", 0, "-tr", "UNetTrainer", *SHORT_TRAINING),
            "preprocessed case(s) no_such_case missing")
    assert not (tmp_path / "results").exists()  # a training that cannot start leaves no trace


def test_train_continue_from_a_corrupt_checkpoint(own_preprocessed, tmp_path, capsys):
    checkpoint = tmp_path / "results" / DATASET / UNET_PNG / "fold_0" / "checkpoint_latest.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"PK\x03\x04 a zip cut short")
    before = snapshot(checkpoint.parent)
    refused(capsys, run(run_training.main, 2021, "2d", 0, "-tr", "UNetTrainer", "--c", *SHORT_TRAINING),
            str(checkpoint), "corrupt or not a PyTorch file")
    after = snapshot(checkpoint.parent)
    assert after.pop("training_log.txt") and after == before  # the log is opened before the checkpoint is read


def test_train_continue_without_a_checkpoint(own_preprocessed, tmp_path, capsys, caplog):
    """As nnU-Net: --c with nothing to continue from starts a new training, and says so."""
    assert run(run_training.main, 2021, "2d", 0, "-tr", "UNetTrainer", "--c", *SHORT_TRAINING) == 0
    assert "no checkpoint in" in caplog.text and "starting from scratch" in caplog.text
    assert (tmp_path / "results" / DATASET / UNET_PNG / "fold_0" / "checkpoint_final.pth").is_file()
    assert_no_leftovers(tmp_path)


def test_train_validation_only_without_a_final_checkpoint(own_preprocessed, tmp_path, capsys):
    refused(capsys, run(run_training.main, 2021, "2d", 0, "-tr", "UNetTrainer", "--val"),
            "fold_0/checkpoint_final.pth: checkpoint not found")


def test_train_missing_pretrained_weights(own_preprocessed, tmp_path, capsys):
    plans = json.loads((own_preprocessed / "sdmcPlans.json").read_text())
    plans["plans_name"] = "pretrainedPlans"
    plans["configurations"]["2d"]["families"]["sdmc"]["networks"]["autoencoder"]["pretrained"] = "sd-kl-f8"
    (own_preprocessed / "pretrainedPlans.json").write_text(json.dumps(plans))
    refused(capsys, run(run_training.main, 2021, "2d", 0, "-tr", "SDMCPretrainedTrainer", "-p", "pretrainedPlans",
                        *SHORT_TRAINING),
            "no pretrained weights 'sd-kl-f8'", "sdmc_download_weights -o", "--which sd-kl-f8")
    assert not (tmp_path / "results").exists()


def test_train_missing_mask_autoencoder_file(own_preprocessed, tmp_path, capsys):
    refused(capsys, run(run_training.main, 2021, "2d", 0, "-tr", "SDMCFinetunedTrainer", "-mask_autoencoder",
                        tmp_path / "mask.pth", *SHORT_TRAINING), str(tmp_path / "mask.pth"), "not found")
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_cuda_without_a_gpu(environment, capsys):
    refused(capsys, run(run_training.main, 2021, "2d", 0, "-tr", "UNetTrainer", "-device", "cuda"),
            "no CUDA GPU is available")


def test_train_unwritable_results_folder(own_preprocessed, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDMC_results", str(blocked(tmp_path)))
    refused(capsys, run(run_training.main, 2021, "2d", 0, "-tr", "UNetTrainer", *SHORT_TRAINING),
            "cannot create the folder (Not a directory)")


# ---------------------------------------------------------------- checkpoints that would run code

def code_in_training_checkpoint(trained, tmp_path, marker) -> tuple:
    shutil.copytree(trained / "preprocessed", tmp_path / "preprocessed")
    checkpoint = tmp_path / "results" / DATASET / UNET_PNG / "fold_0" / "checkpoint_latest.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"format": "sdmcunet-checkpoint-1", "payload": evil_pickle(marker)}, checkpoint)
    return checkpoint, run_training.main, [2021, "2d", 0, "-tr", "UNetTrainer", "--c", *SHORT_TRAINING]


def code_in_model_checkpoint(trained, tmp_path, marker) -> tuple:
    model = model_copy(trained, tmp_path)
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    with open(checkpoint, "wb") as stream:  # a bare pickle: the format of torch before 1.6
        pickle.dump(evil_pickle(marker), stream)
    inputs = tmp_path / "in"
    inputs.mkdir()
    return checkpoint, predict.main, ["-i", inputs, "-o", tmp_path / "out", "-m", model, "-np", 0]


def code_in_compvis_checkpoint(trained, tmp_path, marker) -> tuple:
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}, "callback": evil_pickle(marker)}, checkpoint)
    return checkpoint, convert_weights.main, ["-i", checkpoint, "-o", tmp_path / "vae", "--kind", "vae"]


CODE_RUNNING_CHECKPOINTS = {
    "sdmc_train --c": (code_in_training_checkpoint, "could run code"),
    "sdmc_predict": (code_in_model_checkpoint, "not the zip format torch.save writes"),
    "sdmc_convert_weights": (code_in_compvis_checkpoint, "asks to call posix.system"),
}


@pytest.mark.parametrize("command", CODE_RUNNING_CHECKPOINTS)
def test_checkpoint_that_would_run_code(trained, tmp_path, monkeypatch, capsys, command):
    make, phrase = CODE_RUNNING_CHECKPOINTS[command]
    monkeypatch.setenv("SDMC_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("SDMC_results", str(tmp_path / "results"))
    live = tmp_path / "payload_is_live"
    pickle.loads(pickle.dumps(evil_pickle(live)))  # what a plain unpickling of the payload does
    assert live.exists()
    marker = tmp_path / "code_ran"
    checkpoint, main, arguments = make(trained, tmp_path, marker)
    refused(capsys, run(main, *arguments), str(checkpoint), phrase)
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "vae").exists()


# ================================================================ sdmc_predict

@pytest.fixture
def dicom_inputs(trained, tmp_path) -> Path:
    """Two DICOM slices of the release, which the CT model reads."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for dicom in sorted((trained / "release" / "Training" / "Non-Stroke" / "DICOM").iterdir())[:2]:
        shutil.copy(dicom, inputs / dicom.name)
    return inputs


def predict_ct(trained, inputs: Path, output: Path, *options) -> int:
    return run(predict.main, "-i", inputs, "-o", output, "-m", trained / "results" / DATASET / UNET_CT, "-np", 0,
               *options)


def no_rows(path: Path) -> None:
    dataset = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    dataset.Rows = 0
    dataset.save_as(path)


PREDICTION_INPUTS = {  # a bad slice among good ones: (file written, what the listing says)
    "truncated DICOM": (lambda path: path.write_bytes(Path(get_testdata_file("693_UNCR.dcm")).read_bytes()[:4000]),
                        "bad.dcm", "pixel data is truncated"),
    "DICOM of another modality (MR)": (lambda path: shutil.copy(get_testdata_file("MR_small.dcm"), path),
                                       "bad.dcm", "modality is MR, expected CT"),
    "empty file": (lambda path: path.write_bytes(b""), "bad.dcm", "not a DICOM file"),
    "image without pixels (Rows 0)": (no_rows, "bad.dcm", "empty image (0 rows"),
    "NaN and infinite intensities": (lambda path: nan_nifti(path, np.zeros((64, 64))), "bad_0000.nii.gz",
                                     "holds NaN or infinite values"),
}


@pytest.mark.parametrize("damage", PREDICTION_INPUTS)
def test_predict_lists_a_bad_slice_and_predicts_the_others(trained, dicom_inputs, tmp_path, capsys, damage):
    write, name, phrase = PREDICTION_INPUTS[damage]
    write(dicom_inputs / name)
    before = snapshot(dicom_inputs)
    message = refused(capsys, predict_ct(trained, dicom_inputs, tmp_path / "out"),
                      "1 input(s) could not be predicted", str(dicom_inputs / name), phrase)
    assert "Traceback" not in message
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    good = sorted(path.name.replace(".dcm", ".png") for path in dicom_inputs.glob("*.dcm") if path.stem != "bad")
    assert written == [*good, "prediction_info.json"]
    assert snapshot(dicom_inputs) == before
    assert_no_leftovers(tmp_path)


def test_predict_sixteen_bit_png_like_its_eight_bit_picture(trained, tmp_path, capsys):
    """Accepted: the PNG channel is min-max scaled per image, so 8 or 16 bits give the same input."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    png = sorted((trained / "release" / "Training" / "Hemorrhagic" / "PNG").iterdir())[0]
    shutil.copy(png, inputs / "eight.png")
    Image.fromarray(read_png(png)[..., 0].astype(np.uint16) * 257).save(inputs / "sixteen.png")
    assert Image.open(inputs / "sixteen.png").mode == "I;16"
    model = trained / "results" / DATASET / UNET_PNG
    assert run(predict.main, "-i", inputs, "-o", tmp_path / "out", "-m", model, "-np", 0) == 0
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "sixteen.png"), read_png(tmp_path / "out" / "eight.png"))


def test_predict_a_slice_with_a_legal_long_name(trained, tmp_path, capsys):
    """251 bytes with ".png": legal, but the temporary file of its label map used to be 20 bytes too long."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    png = sorted((trained / "release" / "Training" / "Hemorrhagic" / "PNG").iterdir())[0]
    name = "p" * 247 + ".png"
    shutil.copy(png, inputs / name)
    model = trained / "results" / DATASET / UNET_PNG
    assert run(predict.main, "-i", inputs, "-o", tmp_path / "out", "-m", model, "-np", 0, "--save_probabilities") == 0
    assert (tmp_path / "out" / name).is_file()


def test_predict_fold_that_does_not_exist(trained, dicom_inputs, tmp_path, capsys):
    model = trained / "results" / DATASET / UNET_CT
    refused(capsys, run(predict.main, "-i", dicom_inputs, "-o", tmp_path / "out", "-m", model, "-f", 7),
            "fold_7/checkpoint_final.pth", "-f 0")
    assert not (tmp_path / "out").exists()


def test_predict_corrupt_checkpoint(trained, dicom_inputs, tmp_path, capsys):
    model = model_copy(trained, tmp_path, UNET_CT)
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100_000])
    refused(capsys, run(predict.main, "-i", dicom_inputs, "-o", tmp_path / "out", "-m", model), str(checkpoint),
            "corrupt")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_predict_cuda_without_a_gpu(trained, dicom_inputs, tmp_path, capsys):
    refused(capsys, predict_ct(trained, dicom_inputs, tmp_path / "out", "-device", "cuda"), "no CUDA GPU is available")
    assert not (tmp_path / "out").exists()


def test_predict_model_whose_checkpoint_names_an_import_path(trained, dicom_inputs, tmp_path, monkeypatch, capsys):
    """A trainer name read from a file is looked up, never imported: importing runs the module's code."""
    (tmp_path / "planted.py").write_text(f"open({str(tmp_path / 'marker')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = model_copy(trained, tmp_path, UNET_CT)
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    state = load_checkpoint(checkpoint)
    save_checkpoint(checkpoint, {key: value for key, value in state.items() if key != "format"}
                    | {"trainer": "planted:UNetTrainer"})
    refused(capsys, run(predict.main, "-i", dicom_inputs, "-o", tmp_path / "out", "-m", model),
            str(checkpoint), "'planted:UNetTrainer', which is not a registered trainer")
    assert not (tmp_path / "marker").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["os:system", "collections:OrderedDict"])
def test_train_trainer_that_is_not_a_trainer(environment, capsys, name):
    refused(capsys, run(run_training.main, 2021, "2d", 0, "-tr", name), f"{name!r} is not a trainer")


def test_predict_folder_that_is_no_model(trained, dicom_inputs, tmp_path, capsys):
    refused(capsys, run(predict.main, "-i", dicom_inputs, "-o", tmp_path / "out", "-m", dicom_inputs),
            str(dicom_inputs), "not a model folder (no plans.json)")


def test_predict_output_is_the_input_folder(trained, dicom_inputs, tmp_path, capsys):
    before = snapshot(dicom_inputs)
    refused(capsys, predict_ct(trained, dicom_inputs, dicom_inputs), "must differ from the input folder")
    assert snapshot(dicom_inputs) == before


def test_predict_unwritable_output(trained, dicom_inputs, tmp_path, capsys):
    output = blocked(tmp_path)
    refused(capsys, predict_ct(trained, dicom_inputs, output), str(output),
            "cannot create the folder (Not a directory)")


# ================================================================ sdmc_evaluate

@pytest.fixture
def label_folders(tmp_path) -> tuple[Path, Path]:
    """Reference and prediction folders of two 8x8 PNG label maps."""
    maps = {"a": label_map((8, 8), IS=np.s_[1:4, 1:4]), "b": label_map((8, 8), HS=np.s_[4:7, 4:7])}
    return write_label_maps(tmp_path / "ref", maps), write_label_maps(tmp_path / "pred", maps)


def evaluate_folders(folders: tuple[Path, Path], *options) -> int:
    return run(evaluate_predictions.main, "-ref", folders[0], "-pred", folders[1], "-np", 1, *options)


def colour_label_map(path: Path) -> None:
    colours = np.zeros((8, 8, 3), np.uint8)
    colours[4:7, 4:7] = (0, 255, 0)  # green: the hemorrhage colour of the overlays; channel 0 reads 0
    Image.fromarray(colours).save(path)


EVALUATION_INPUTS = {  # a spoiled prediction: (how, what the message says)
    "colour (RGB) label map": (colour_label_map, "a label map must be a grey PNG"),
    "labels outside 0..2": (lambda path: write_label_map(np.full((8, 8), 5, np.uint8), path),
                            "labels must lie in 0..2"),
    "shape differs from the reference": (lambda path: write_label_map(np.zeros((8, 9), np.uint8), path),
                                         "shape (8, 9) differs from the reference's (8, 8)"),
    "empty file": (lambda path: path.write_bytes(b""), "cannot be read as PNG"),
    "not a picture": (lambda path: path.write_text("notes"), "cannot be read as PNG"),
}


@pytest.mark.parametrize("damage", EVALUATION_INPUTS)
def test_evaluate_refuses_a_bad_label_map(label_folders, capsys, damage):
    spoil, phrase = EVALUATION_INPUTS[damage]
    spoil(label_folders[1] / "b.png")
    before = snapshot(label_folders[1])
    refused(capsys, evaluate_folders(label_folders), str(label_folders[1] / "b.png"), phrase)
    assert snapshot(label_folders[1]) == before  # no summary.json written


def test_evaluate_ignores_files_that_are_not_slices(label_folders, capsys):
    """Probabilities, notes, an overlays/ folder and an old summary.json are not label maps: ignored."""
    prediction = label_folders[1]
    (prediction / "notes.txt").write_text("run 3")
    np.savez_compressed(prediction / "a.npz", probabilities=np.zeros((3, 8, 8), np.float16))
    (prediction / "overlays").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(prediction / "overlays" / "a.png")
    (prediction / "summary.json").write_text("{}")
    assert evaluate_folders(label_folders) == 0
    summary = json.loads((prediction / "summary.json").read_text())
    assert sorted(case["case"] for case in summary["metric_per_case"]) == ["a", "b"]


def test_evaluate_unwritable_summary(label_folders, tmp_path, capsys):
    output = blocked(tmp_path)
    refused(capsys, evaluate_folders(label_folders, "-o", output / "summary.json"), str(output),
            "cannot create the folder")


def test_evaluate_fold_that_does_not_exist(environment, capsys):
    refused(capsys, run(evaluate_predictions.main, "-d", 2021, "-tr", "UNetTrainer", "-f", 7, "-np", 1),
            "no validation predictions of fold 7", "sdmc_train 2021 2d 7 -tr UNetTrainer")


# ================================================================ sdmc_ensemble

@pytest.fixture
def two_predictions(trained, tmp_path) -> list[Path]:
    """The PNG model's validation predictions (label maps and probabilities) in two folders."""
    validation = trained / "results" / DATASET / UNET_PNG / "fold_0" / "validation"
    return [Path(shutil.copytree(validation, tmp_path / name)) for name in ("one", "two")]


def ensemble_into(inputs: list[Path], output: Path) -> int:
    return run(ensemble.main, "-i", *inputs, "-o", output, "-np", 1)


def first_probabilities(folder: Path) -> Path:
    return sorted(folder.glob("*.npz"))[0]


def test_ensemble_corrupt_probabilities(two_predictions, tmp_path, capsys):
    """Cases are ensembled one by one: those before the broken one are written, each one complete."""
    spoiled = sorted(two_predictions[1].glob("*.npz"))[-1]
    spoiled.write_bytes(spoiled.read_bytes()[:50])
    refused(capsys, ensemble_into(two_predictions, tmp_path / "out"), str(spoiled), "cannot be read as .npz")
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written == sorted([*sorted(path.name for path in two_predictions[1].glob("*.nii.gz"))[:-1],
                              "ensemble_info.json"])
    assert_no_leftovers(tmp_path)


def test_ensemble_probabilities_of_different_shapes(two_predictions, tmp_path, capsys):
    spoiled = first_probabilities(two_predictions[1])
    np.savez_compressed(spoiled, probabilities=np.zeros((3, 5, 5), np.float16))
    refused(capsys, ensemble_into(two_predictions, tmp_path / "out"), str(spoiled),
            "different shapes cannot be averaged")


def test_ensemble_output_is_an_input(two_predictions, capsys):
    before = snapshot(two_predictions[0])
    refused(capsys, ensemble_into(two_predictions, two_predictions[0]), "must not be one of the input folders")
    assert snapshot(two_predictions[0]) == before


def test_ensemble_unwritable_output(two_predictions, tmp_path, capsys):
    output = blocked(tmp_path)
    refused(capsys, ensemble_into(two_predictions, output), str(output), "cannot create the folder")


# ================================================================ sdmc_find_best_configuration, sdmc_report, ...

def test_find_best_unknown_dataset_id(environment, capsys):
    refused(capsys, run(find_best_configuration.main, "-d", 77), "no dataset with id 77")


def test_find_best_fold_that_does_not_exist(environment, capsys):
    refused(capsys, run(find_best_configuration.main, "-d", 2021, "-f", 7, "-np", 1),
            "has validation predictions of folds 7", "sdmc_train 2021 2d FOLD")
    written = {path.name for path in (environment / "results").rglob("*")}
    assert not written & {"find_best_configuration.json", "inference_instructions.txt", "postprocessing.json"}


def test_report_unknown_dataset_id(environment, capsys):
    refused(capsys, run(report.main, "-d", 77), "77")


def test_postprocessing_file_missing(label_folders, tmp_path, capsys):
    refused(capsys, run(remove_small_components.main, "-i", label_folders[1], "-o", tmp_path / "out",
                        "-pp", tmp_path / "postprocessing.json"), str(tmp_path / "postprocessing.json"), "not found")
    assert not (tmp_path / "out").exists()


# ================================================================ sdmc_convert_weights

def test_convert_weights_truncated_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(4)}}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    refused(capsys, run(convert_weights.main, "-i", checkpoint, "-o", tmp_path / "vae", "--kind", "vae"),
            str(checkpoint), "not a checkpoint in torch's zip format")
    assert not (tmp_path / "vae").exists()


def test_convert_weights_missing_checkpoint(tmp_path, capsys):
    refused(capsys, run(convert_weights.main, "-i", tmp_path / "model.ckpt", "-o", tmp_path / "vae", "--kind", "vae"),
            str(tmp_path / "model.ckpt"), "file not found")
    assert not (tmp_path / "vae").exists()


def test_convert_weights_checkpoint_of_something_else(tmp_path, capsys):
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"classifier.weight": torch.zeros(2, 2)}}, checkpoint)
    refused(capsys, run(convert_weights.main, "-i", checkpoint, "-o", tmp_path / "vae", "--kind", "vae"),
            str(checkpoint), "not a kl-f8 style autoencoder")
    assert not (tmp_path / "vae").exists()


# ================================================================ sdmc_download_weights, sdmc_download_stroke2021

def zip_of(members: dict[str, bytes]) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return stream.getvalue()


MALICIOUS_ZIPS = {  # (members, what the message says)
    "path traversal": ({"model.ckpt": b"x", "../../escaped.txt": b"x"}, "points outside the target folder"),
    "zip bomb": ({"model.ckpt": bytes(20 * 2**20)}, "refusing a possible zip bomb"),
}


@pytest.mark.parametrize("kind", MALICIOUS_ZIPS)
def test_download_weights_malicious_archive(file_server, tmp_path, capsys, kind):
    members, phrase = MALICIOUS_ZIPS[kind]
    (file_server.folder / "kl-f8.zip").write_bytes(zip_of(members))
    weights = tmp_path / "weights"
    refused(capsys, run(download_weights.main, "-o", weights, "--base-url", file_server.url, "--which", "sd-kl-f8"),
            str(weights / "downloads" / "kl-f8.zip"), phrase)
    # the download stays (for inspection, or --max-extracted-gb); nothing was extracted or converted
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if "escaped" in path.name) == []
    assert sorted(path.name for path in weights.rglob("*")) == ["downloads", "kl-f8.zip"]
    assert_no_leftovers(tmp_path)


def test_download_weights_missing_file_on_the_server(file_server, tmp_path, capsys):
    weights = tmp_path / "weights"
    refused(capsys, run(download_weights.main, "-o", weights, "--base-url", file_server.url, "--which", "sd-kl-f8"),
            f"{file_server.url}/kl-f8.zip: HTTP 404")
    assert [path.name for path in weights.rglob("*")] == ["downloads"]


def release_parts(file_server, archive: bytes) -> None:
    """Serve `archive` as the six hemorrhagic parts (documents 39-44) of the portal."""
    parts = file_server.folder / "Document" / "Download"
    parts.mkdir(parents=True)
    bounds = np.linspace(0, len(archive), 7).astype(int)
    for part_id, start, end in zip(range(39, 45), bounds, bounds[1:]):
        (parts / str(part_id)).write_bytes(archive[start:end])


@pytest.mark.parametrize("kind", MALICIOUS_ZIPS)
def test_download_stroke2021_malicious_archive(file_server, tmp_path, capsys, kind):
    members, phrase = MALICIOUS_ZIPS[kind]
    release_parts(file_server, zip_of(members))
    output = tmp_path / "release"
    refused(capsys, run(download_stroke2021.main, "-o", output, "--groups", "hemorrhagic", "--base-url",
                        file_server.url), str(output / "downloads" / "hemorrhagic.zip"), phrase)
    assert sorted(path.name for path in output.iterdir()) == ["download.log", "downloads"]
    assert not any("escaped" in path.name for path in tmp_path.rglob("*"))
    assert_no_leftovers(tmp_path)


def test_download_stroke2021_output_is_a_file(file_server, tmp_path, capsys):
    (tmp_path / "release").write_text("mine")
    refused(capsys, run(download_stroke2021.main, "-o", tmp_path / "release", "--base-url", file_server.url),
            str(tmp_path / "release"), "exists and is not a folder")
    assert (tmp_path / "release").read_text() == "mine" and file_server.requests == []


def test_download_stroke2021_malformed_checksum_file(file_server, tmp_path, capsys):
    (tmp_path / "sums.txt").write_text("d41d8cd98f00b204e9800998ecf8427e\n")
    refused(capsys, run(download_stroke2021.main, "-o", tmp_path / "release", "--base-url", file_server.url,
                        "--checksums", tmp_path / "sums.txt"), f"{tmp_path / 'sums.txt'}, line 1",
            "expected '<sha256>  <file name>'")
    assert file_server.requests == []


def test_download_stroke2021_missing_part(file_server, tmp_path, capsys):
    refused(capsys, run(download_stroke2021.main, "-o", tmp_path / "release", "--groups", "hemorrhagic",
                        "--base-url", file_server.url, "--retries", 0), "/Document/Download/39: HTTP 404")
    assert_no_leftovers(tmp_path)


# ================================================================ sdmc_import_reference

REFERENCE_VAE = {"ch": 16, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1}
REFERENCE_UNET = {"model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [2],
                  "num_heads": 4, "dropout": 0.0}


def reference_config(path: Path, edit=lambda config: None) -> Path:
    """The reference's training YAML for the small sizes, changed by `edit` (a function of the mapping)."""
    config = sdmc_seg_config(REFERENCE_VAE, REFERENCE_UNET, image_size=64)
    edit(config)
    path.write_text(yaml.safe_dump(config))
    return path


def import_into(tmp_path: Path, state: dict, *options) -> tuple[Path, int]:
    """Write `state` as a reference checkpoint and import it into tmp_path/model: (checkpoint, exit code)."""
    checkpoint = write_compvis_checkpoint(tmp_path / "last.ckpt", state, global_step=10, epoch=1)
    return checkpoint, run(import_reference.main, "-i", checkpoint, "-o", tmp_path / "model", *options)


def assert_nothing_imported(tmp_path: Path) -> None:
    assert not (tmp_path / "model").exists()
    assert_no_leftovers(tmp_path)


def test_import_reference_checkpoint_that_would_run_code(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": sdseg_state_dict(REFERENCE_VAE, REFERENCE_UNET), "callbacks": evil_pickle(marker)},
               checkpoint)
    refused(capsys, run(import_reference.main, "-i", checkpoint, "-o", tmp_path / "model"), str(checkpoint),
            "refused: the checkpoint asks to call posix.system, which could run code")
    assert not marker.exists()
    assert_nothing_imported(tmp_path)


def test_import_reference_truncated_checkpoint(tmp_path, capsys):
    checkpoint = write_compvis_checkpoint(tmp_path / "last.ckpt", sdseg_state_dict(REFERENCE_VAE, REFERENCE_UNET))
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    refused(capsys, run(import_reference.main, "-i", checkpoint, "-o", tmp_path / "model"), str(checkpoint),
            "not a checkpoint in torch's zip format")
    assert_nothing_imported(tmp_path)


def with_label_embedding(state: dict) -> None:
    state["model.diffusion_model.label_emb.0.weight"] = torch.zeros(128, 14)


def without_image_encoder(state: dict) -> None:
    for name in [name for name in state if name.startswith("cond_stage_model.")]:
        del state[name]


def with_four_input_channels(state: dict) -> None:
    for name in ("model.diffusion_model.input_blocks.0.0.weight", "model_ema.diffusion_modelinput_blocks00weight"):
        state[name] = state[name][:, :4]


def with_an_extra_unet_weight(state: dict) -> None:
    state["model.diffusion_model.input_blocks.1.0.extra.weight"] = torch.zeros(4)
    state["model_ema.diffusion_modelinput_blocks10extraweight"] = torch.zeros(4)


def with_a_projection_to_three_channels(state: dict) -> None:
    state["cond_stage_model.out.weight"] = state["cond_stage_model.out.weight"][:3]
    state["cond_stage_model.out.bias"] = state["cond_stage_model.out.bias"][:3]


OTHER_ARCHITECTURES = {  # (change to the state dict, what the message says)
    "class-conditioned UNet (label_emb)": (with_label_embedding, "a class-conditioned UNet "
                                           "(model.diffusion_model.label_emb.0.weight: SDSeg's multi-class variant)"),
    "no image encoder": (without_image_encoder, "not an SDSeg / SDMC-Seg checkpoint: parts it lacks (2): "
                         "cond_stage_model.encoder.* (the image encoder), cond_stage_model.out.*"),
    "UNet of 4 input channels": (with_four_input_channels, "its UNet reads 4 input channels; SDMC-Seg's reads 8"),
    "UNet weight of no place": (with_an_extra_unet_weight, "does not fit our denoiser: checkpoint weights with no "
                                "place in it (1): input_blocks.1.0.extra.weight"),
    "image projection to 3 channels": (with_a_projection_to_three_channels, "its image encoder's projection "
                                       "(cond_stage_model.out.*) has shapes {'weight': (3, 8, 1, 1), 'bias': (3,)}"),
}


@pytest.mark.parametrize("kind", OTHER_ARCHITECTURES)
def test_import_reference_checkpoint_of_another_architecture(tmp_path, capsys, kind):
    change, phrase = OTHER_ARCHITECTURES[kind]
    state = sdseg_state_dict(REFERENCE_VAE, REFERENCE_UNET)
    change(state)
    checkpoint, code = import_into(tmp_path, state)
    refused(capsys, code, str(checkpoint), phrase)
    assert_nothing_imported(tmp_path)


def set_field(name: str, value: object):
    """An edit of the YAML mapping setting the dotted field `name`."""
    def edit(config: dict) -> None:
        *parents, last = name.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return edit


CONFIG_DISAGREEMENTS = {  # (edit, what the message says)
    "UNet width": (set_field("model.params.unet_config.params.model_channels", 64),
                   "model.params.unet_config.params.model_channels is 64 there but 32 in"),
    "mask autoencoder width": (set_field("model.params.first_stage_config.params.ddconfig.ch", 32),
                               "model.params.first_stage_config.params.ddconfig.ch is 32 there but 16 in"),
    "noise schedule": (set_field("model.params.linear_start", 0.00085),
                       "linear_start, linear_end are 0.00085, 0.0155 there, but the noise schedule in"),
}


@pytest.mark.parametrize("kind", CONFIG_DISAGREEMENTS)
def test_import_reference_config_that_disagrees_with_the_checkpoint(tmp_path, capsys, kind):
    edit, phrase = CONFIG_DISAGREEMENTS[kind]
    config = reference_config(tmp_path / "stroke.yaml", edit)
    checkpoint, code = import_into(tmp_path, sdseg_state_dict(REFERENCE_VAE, REFERENCE_UNET), "--config", config)
    message = refused(capsys, code, str(config), phrase)
    assert str(checkpoint) in message
    assert_nothing_imported(tmp_path)


def test_import_reference_binary_sdseg(tmp_path, capsys):
    def binary(config: dict) -> None:
        config["model"]["target"] = "ldm.models.diffusion.SDSeg.SDSeg"
        del config["model"]["params"]["num_classes"]
    config = reference_config(tmp_path / "sdseg.yaml", binary)
    _, code = import_into(tmp_path, sdseg_state_dict(REFERENCE_VAE, REFERENCE_UNET), "--config", config)
    refused(capsys, code, str(config), "a binary SDSeg model", "decodes one foreground class",
            "a 3-class colour mask")
    assert_nothing_imported(tmp_path)


def test_import_reference_checkpoint_without_ema_weights(tmp_path, capsys):
    checkpoint, code = import_into(tmp_path, sdseg_state_dict(REFERENCE_VAE, REFERENCE_UNET, ema=False))
    refused(capsys, code, str(checkpoint), "holds no EMA weights", "--no-ema")
    assert_nothing_imported(tmp_path)


def test_import_reference_into_a_folder_holding_another_model(tmp_path, capsys):
    config = reference_config(tmp_path / "stroke.yaml")
    assert import_into(tmp_path, sdseg_state_dict(REFERENCE_VAE, REFERENCE_UNET), "--config", config)[1] == 0
    before = snapshot(tmp_path / "model")
    other = write_compvis_checkpoint(tmp_path / "other.ckpt", sdseg_state_dict(REFERENCE_VAE, REFERENCE_UNET, seed=1))
    refused(capsys, run(import_reference.main, "-i", other, "-o", tmp_path / "model", "--config", config),
            str(tmp_path / "model"), "exists and is not a conversion of this checkpoint with these options")
    assert snapshot(tmp_path / "model") == before
    assert_no_leftovers(tmp_path)


def test_import_reference_unwritable_output(tmp_path, capsys):
    checkpoint = write_compvis_checkpoint(tmp_path / "last.ckpt", sdseg_state_dict(REFERENCE_VAE, REFERENCE_UNET))
    output = blocked(tmp_path)
    refused(capsys, run(import_reference.main, "-i", checkpoint, "-o", output),
            str(output.parent / ".output.partial"), "cannot create the folder (Not a directory)")
    assert_no_leftovers(tmp_path)


NOT_YAML_CONFIGS = {  # (file content, what the message says)
    "not valid YAML": ("model: {params: [unclosed\n", "not valid YAML (line 2, column 1: expected ',' or ']'"),
    "not a mapping": ("- model\n- params\n", "expected a mapping (a training config with model: params: ...), "
                      "found list"),
}


@pytest.mark.parametrize("kind", NOT_YAML_CONFIGS)
def test_import_reference_config_that_is_not_a_yaml_mapping(tmp_path, capsys, kind):
    content, phrase = NOT_YAML_CONFIGS[kind]
    config = tmp_path / "stroke.yaml"
    config.write_text(content)
    _, code = import_into(tmp_path, sdseg_state_dict(REFERENCE_VAE, REFERENCE_UNET), "--config", config)
    refused(capsys, code, str(config), phrase)
    assert_nothing_imported(tmp_path)
