"""The organisers' PNG channel made from Hounsfield units: the window measured at conversion, its
contract in dataset.json, and the plans that carry it (docs/plans.md, `png_from_hounsfield`)."""

import json
import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import paths_set
from test_bad_input import refused, run
from test_convert import make_release

from sdmcunet.dataset_conversion import synthetic
from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release, main
from sdmcunet.dataset_conversion.png_window import (
    MIN_PIXELS, DegenerateFit, WindowStatistics, fit_png_window,
)
from sdmcunet.experiment_planning import plan_and_preprocess
from sdmcunet.experiment_planning.plan_and_preprocess import plan_experiment
from sdmcunet.experiment_planning.plans import validate_plans
from sdmcunet.experiment_planning.plans_manager import PlansManager
from sdmcunet.imageio import read_nifti
from sdmcunet.raw_dataset import DEFAULT_PNG_WINDOW, load_dataset_json, make_dataset_json, png_from_hounsfield
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json

DATASET = "Dataset2021_Stroke2021"
TOLERANCE_HU = 0.5


def synthetic_release(root: Path) -> Path:
    """3 patients of 64-pixel slices (about 25 slices): a second to make, a second to convert."""
    synthetic.make_synthetic_dataset(root / "release", n_patients=3, seed=4, size=64, progress=False)
    return root / "release"


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    """A synthetic release (the brain window 0..80 HU) converted by sdmc_convert_stroke2021 and planned."""
    root = tmp_path_factory.mktemp("png_window")
    assert main(["-i", str(synthetic_release(root)), "-o", str(root / "raw")]) == 0
    with paths_set(SDMC_raw=root / "raw", SDMC_preprocessed=root / "preprocessed"):
        plan_experiment(2021)
    return root


def test_conversion_measures_the_synthetic_brain_window(planned):
    dataset = planned / "raw" / DATASET
    measured = read_json(dataset / "dataset.json")["png_from_hounsfield"]
    assert measured["low"] == pytest.approx(0, abs=TOLERANCE_HU) and measured["high"] == pytest.approx(80, abs=TOLERANCE_HU)
    assert measured["slices"] == read_json(dataset / "dataset.json")["numTraining"] and measured["pixels"] >= MIN_PIXELS
    assert 0.25 < measured["rmse_grey_levels"] < 0.35  # rounding to whole grey levels alone: 1/sqrt(12) = 0.289
    assert read_json(dataset / "conversion_report.json")["png_from_hounsfield"] == measured
    assert load_dataset_json(dataset).measured_png_window == (measured["low"], measured["high"])


def test_png_from_hounsfield_remakes_the_release_pngs(planned):
    dataset = planned / "raw" / DATASET
    window = load_dataset_json(dataset).measured_png_window
    mismatched = total = 0
    for ct_file in sorted((dataset / "imagesTr").glob("*_0000.nii.gz")):
        hounsfield = read_nifti(ct_file)[0]
        png = read_nifti(ct_file.with_name(ct_file.name.replace("_0000", "_0001")))[0]
        # The generator's own window remakes every grey value exactly ...
        np.testing.assert_array_equal(png_from_hounsfield(hounsfield, DEFAULT_PNG_WINDOW), png)
        # ... and the measured one (a few hundredths of a HU off) differs by one grey level at most, where
        # HU * 255 / 80 falls on a half (HU = 8, 24, 40, ... mod 16) and the tiny offset tips the rounding.
        remade = png_from_hounsfield(hounsfield, window)
        assert remade.dtype == np.float32 and np.abs(remade - png).max() <= 1
        mismatched += int(np.count_nonzero(remade != png))
        total += png.size
    assert mismatched / total < 0.01  # measured: 346 of 94,208 pixels (0.37%)


def test_another_window_is_recovered(tmp_path, monkeypatch):
    def window_minus_10_to_90(hounsfield: np.ndarray) -> np.ndarray:  # written out, not png_from_hounsfield
        return np.rint(np.clip((hounsfield.astype(np.float64) + 10) * 2.55, 0, 255)).astype(np.uint8)

    monkeypatch.setattr(synthetic, "brain_window", window_minus_10_to_90)
    dataset = convert_release(synthetic_release(tmp_path), 2021, tmp_path / "raw")
    low, high = load_dataset_json(dataset).measured_png_window
    assert low == pytest.approx(-10, abs=TOLERANCE_HU) and high == pytest.approx(90, abs=TOLERANCE_HU)


def test_png_only_release_measures_nothing_and_plans_the_default_window(tmp_path):
    release = synthetic_release(tmp_path)
    for dicom_folder in release.glob("Training/*/DICOM"):
        shutil.rmtree(dicom_folder)
    dataset = convert_release(release, 2021, tmp_path / "SDMC_raw")
    assert "png_from_hounsfield" not in read_json(dataset / "dataset.json")
    assert not any(key.startswith("png_from_hounsfield") for key in read_json(dataset / "conversion_report.json"))
    assert load_dataset_json(dataset).measured_png_window is None
    plans = PlansManager.load(plan_experiment(2021))  # SDMC_raw and SDMC_preprocessed: tests/conftest.py
    assert plans.content["configurations"]["2d"]["input_channels"][0]["png_from_hounsfield"] == \
        {"low": 0.0, "high": 80.0, "source": "default"}
    assert plans.configuration("2d").input_channels[0].png_from_hounsfield == DEFAULT_PNG_WINDOW


def test_planner_copies_the_measured_window_into_the_plans(planned):
    measured = read_json(planned / "raw" / DATASET / "dataset.json")["png_from_hounsfield"]
    plans = PlansManager.load(planned / "preprocessed" / DATASET / "sdmcPlans.json")
    png_channel = plans.content["configurations"]["2d"]["input_channels"][0]
    assert png_channel["png_from_hounsfield"] == {"low": measured["low"], "high": measured["high"], "source": "measured"}
    assert plans.configuration("2d").input_channels[0].png_from_hounsfield == (measured["low"], measured["high"])


def test_plans_without_the_window_stay_valid(planned):
    plans = read_json(planned / "preprocessed" / DATASET / "sdmcPlans.json")
    del plans["configurations"]["2d"]["input_channels"][0]["png_from_hounsfield"]  # plans older than it
    validate_plans(plans, Path("older.json"))
    assert PlansManager(plans).configuration("2d").input_channels[0].png_from_hounsfield is None


@pytest.mark.parametrize("window,message", [
    ({"low": 80, "high": 0, "source": "measured"}, "png_from_hounsfield low and high must be finite numbers"),
    ({"low": 0, "high": math.inf, "source": "default"}, "png_from_hounsfield low and high must be finite numbers"),
    ({"low": 0, "high": "80", "source": "default"}, "png_from_hounsfield low and high must be finite numbers"),
    ({"low": 0, "high": 80, "source": "guessed"}, "png_from_hounsfield.source must be one of"),
    ([0, 80], "png_from_hounsfield must be an object"),
])
def test_validate_plans_refuses_a_bad_window_naming_the_field(planned, window, message):
    plans = read_json(planned / "preprocessed" / DATASET / "sdmcPlans.json")
    plans["configurations"]["2d"]["input_channels"][0]["png_from_hounsfield"] = window
    with pytest.raises(SDMCError, match=f"mine.json: invalid plans:\n.*input_channels\\[0\\]: {message}"):
        validate_plans(plans, Path("mine.json"))


@pytest.mark.parametrize("window", [{"low": 80, "high": 0}, {"low": 0}, {"low": 0, "high": math.nan}, [0, 80]])
def test_a_bad_window_in_dataset_json_is_refused_naming_the_file(tmp_path, window):
    content = make_dataset_json({0: "CT", 1: "PNG"}, {"background": 0, "ischemic": 1, "hemorrhagic": 2}, 3,
                                ".nii.gz", png_from_hounsfield=window)
    (tmp_path / "dataset.json").write_text(json.dumps(content))  # json writes NaN as NaN, as it reads it
    with pytest.raises(SDMCError, match=re.escape(f"{tmp_path / 'dataset.json'}: png_from_hounsfield must be an object")):
        load_dataset_json(tmp_path)


def copy_of(planned: Path, tmp_path: Path, *stages: str) -> Path:
    """The planned dataset's `stages` (raw, preprocessed) copied where the test's SDMC_raw / SDMC_preprocessed point."""
    for stage in stages:
        shutil.copytree(planned / stage / DATASET, tmp_path / f"SDMC_{stage}" / DATASET)
    return tmp_path


def test_plan_and_preprocess_refuses_a_bad_window_in_dataset_json(planned, tmp_path, capsys):
    dataset_json = copy_of(planned, tmp_path, "raw") / "SDMC_raw" / DATASET / "dataset.json"
    content = read_json(dataset_json)
    content["png_from_hounsfield"] |= {"low": 90, "high": -10}
    dataset_json.write_text(json.dumps(content))
    refused(capsys, run(plan_and_preprocess.main, "-d", 2021, "-np", 1),
            f"{dataset_json}: png_from_hounsfield must be an object with finite numbers low < high")
    assert not (tmp_path / "SDMC_preprocessed").exists()


def test_preprocess_refuses_a_bad_window_in_the_plans(planned, tmp_path, capsys):
    plans_file = copy_of(planned, tmp_path, "raw", "preprocessed") / "SDMC_preprocessed" / DATASET / "sdmcPlans.json"
    plans = read_json(plans_file)
    plans["configurations"]["2d"]["input_channels"][0]["png_from_hounsfield"]["source"] = "guessed"
    plans_file.write_text(json.dumps(plans))
    refused(capsys, run(plan_and_preprocess.preprocess_main, "-d", 2021, "-p", "sdmcPlans"),
            f"{plans_file}: invalid plans", "input_channels[0]: png_from_hounsfield.source must be one of "
            "('measured', 'default'), got 'guessed'")
    assert not (plans_file.parent / "sdmcPlans_2d").exists()


def test_nnunet_v2_reads_a_dataset_json_with_the_window(planned, tmp_path, monkeypatch):
    pytest.importorskip("nnunetv2")
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable))
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(planned / "raw" / DATASET), num_processes=1)  # raises on any problem


def test_pngs_that_are_no_window_of_their_dicoms_measure_nothing(real_samples, tmp_path, caplog):
    """The real PNGs beside an unrelated head CT: the fit is refused, the dataset still converted."""
    with caplog.at_level(logging.WARNING, logger="sdmcunet.convert"):
        dataset = convert_release(make_release(real_samples, tmp_path / "release"), 2021, tmp_path / "raw")
    assert "png_from_hounsfield" not in read_json(dataset / "dataset.json")
    refusal = read_json(dataset / "conversion_report.json")["png_from_hounsfield_refused"]
    assert "grey falls as HU rises" in refusal and refusal in caplog.text  # the pooled slope is -1e-4
    assert "will assume the brain window 0..80 HU" in caplog.text


def test_degenerate_fits_are_refused():
    hounsfield = np.arange(-50, 150, dtype=np.float64).reshape(10, 20)
    exact = np.rint(np.clip(hounsfield * 255 / 80, 0, 255))
    fit = fit_png_window([WindowStatistics.of_pixels(hounsfield, exact)] * 20)  # one slice's sums pooled 20 times
    assert (fit.low, fit.high, fit.slices) == (pytest.approx(0, abs=0.1), pytest.approx(80, abs=0.1), 20)
    assert fit.pixels == 20 * np.count_nonzero((exact > 0) & (exact < 255))
    with pytest.raises(DegenerateFit, match=f"at least {MIN_PIXELS} needed"):
        fit_png_window([WindowStatistics.of_pixels(hounsfield, exact)])
    with pytest.raises(DegenerateFit, match="grey falls as HU rises"):
        fit_png_window([WindowStatistics.of_pixels(hounsfield, 255 - exact)] * 20)
    with pytest.raises(DegenerateFit, match="the same HU"):
        fit_png_window([WindowStatistics.of_pixels(np.full((40, 40), 30.0), np.full((40, 40), 96.0))])
    noisy = exact + np.random.default_rng(0).normal(0, 20, exact.shape)
    with pytest.raises(DegenerateFit, match="RMSE of"):
        fit_png_window([WindowStatistics.of_pixels(hounsfield, noisy)] * 20)
