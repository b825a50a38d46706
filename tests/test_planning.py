import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_preprocessed_dataset

from sdmcunet.experiment_planning import plan_and_preprocess as pp
from sdmcunet.experiment_planning.fingerprint import SAMPLING_SEED
from sdmcunet.experiment_planning.planners import PLANNERS, SDMCPlanner
from sdmcunet.experiment_planning.plans import configuration, load_plans, save_plans, validate_plans
from sdmcunet.experiment_planning.plans_manager import PlansManager
from sdmcunet.experiment_planning.splits import check_splits, make_splits, move_holdout, patient_of_each_case
from sdmcunet.preprocessing.geometry import Geometry, label_map_to_original, label_to_network, plan_geometry
from sdmcunet.raw_dataset import load_dataset_json, read_raw_image, training_cases
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json

RAW_NAME = "Dataset2021_Stroke2021"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A synthetic dataset of 10 patients, converted, planned and preprocessed once for the module."""
    root = tmp_path_factory.mktemp("planned")
    make_preprocessed_dataset(root, 10, 3, 96, "--verify_dataset_integrity")
    return root


@pytest.fixture
def dirs(planned, monkeypatch):
    monkeypatch.setenv("SDMC_raw", str(planned / "raw"))
    monkeypatch.setenv("SDMC_preprocessed", str(planned / "preprocessed"))
    return planned / "raw" / RAW_NAME, planned / "preprocessed" / RAW_NAME


def test_outputs_exist(dirs):
    raw, preprocessed = dirs
    for name in ("dataset_fingerprint.json", "sdmcPlans.json", "splits_final.json", "dataset.json"):
        assert (preprocessed / name).is_file(), name
    cases = sorted(read_json(preprocessed / "dataset_fingerprint.json")["cases"])
    data = preprocessed / "sdmcPlans_2d"
    for case in cases:
        assert {(data / f"{case}{suffix}").is_file() for suffix in (".npy", "_seg.npy", ".json")} == {True}
        assert (preprocessed / "gt_segmentations" / f"{case}.nii.gz").is_file()


def test_fingerprint_matches_a_direct_numpy_computation(dirs):
    raw, preprocessed = dirs
    fingerprint = read_json(preprocessed / "dataset_fingerprint.json")
    cases = training_cases(raw, load_dataset_json(raw))
    per_case = int(10e7 // len(cases))
    samples = {0: [], 1: []}
    for case in cases.values():
        foreground = read_raw_image(case.label)[0] > 0
        if not foreground.any():
            continue
        rng = np.random.RandomState(SAMPLING_SEED)  # one generator per case, channels drawn in order
        for channel, path in enumerate(case.images):
            pixels = read_raw_image(path)[0].astype(np.float32)[foreground]
            samples[channel].append(rng.choice(pixels, per_case, replace=True))
    for channel in (0, 1):
        drawn = np.concatenate(samples[channel])
        statistics = fingerprint["foreground_intensity_properties_per_channel"][str(channel)]
        assert statistics["mean"] == pytest.approx(float(np.mean(drawn, dtype=np.float64)), rel=1e-12)
        assert statistics["std"] == pytest.approx(float(np.std(drawn, dtype=np.float64)), rel=1e-12)
        assert statistics["median"] == float(np.median(drawn))
        assert statistics["min"] == float(drawn.min()) and statistics["max"] == float(drawn.max())
        assert statistics["percentile_00_5"] == pytest.approx(float(np.percentile(drawn, 0.5)))
        assert statistics["percentile_99_5"] == pytest.approx(float(np.percentile(drawn, 99.5)))
    assert fingerprint["shapes"][0] == list(read_raw_image(next(iter(cases.values())).label)[0].shape)


def test_fingerprint_agrees_with_nnunet_v2(dirs, monkeypatch, tmp_path):
    pytest.importorskip("nnunetv2")
    raw, preprocessed = dirs
    monkeypatch.setenv("nnUNet_raw", str(raw.parent))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    theirs = DatasetFingerprintExtractor(2021, num_processes=1).run()["foreground_intensity_properties_per_channel"]
    theirs = {str(channel): statistics for channel, statistics in theirs.items()}
    ours = read_json(preprocessed / "dataset_fingerprint.json")["foreground_intensity_properties_per_channel"]
    for channel in ("0", "1"):
        for key, value in theirs[channel].items():
            assert ours[channel][key] == pytest.approx(value, rel=1e-9), (channel, key)


def test_cpu_plans_validate_and_hold_every_decision(dirs):
    _, preprocessed = dirs
    plans = load_plans(preprocessed / "sdmcPlans.json")
    config = configuration(plans, "2d")
    assert plans["compute_target"]["device"] == "cpu"
    assert config["image_size"] == [96, 96] and config["latent_size"] == [12, 12]
    window = config["input_channels"][0].pop("png_from_hounsfield")  # measured: see tests/test_png_window.py
    assert config["input_channels"] == [{"name": "PNG", "source_channel": 1, "normalization": "min_max_per_image"}]
    assert window == {"low": pytest.approx(0, abs=0.5), "high": pytest.approx(80, abs=0.5), "source": "measured"}
    assert set(config["families"]) == {"baseline", "sdmc", "mask_autoencoder"}
    assert config["families"]["sdmc"]["size_preset"] == "tiny"
    assert config["families"]["sdmc"]["diffusion"]["prediction_type"] == "v_prediction"
    assert set(config["families"]["baseline"]["networks"]) == {"UNet", "ResUNet34", "SegResNet", "SwinUNETR"}


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(image_size=[100, 100]), "multiples of 32"),
    (lambda c: c.update(latent_size=[8, 8]), "latent_size must be image_size / 8"),
    (lambda c: c["input_channels"][0].update(normalization="magic"), "normalization must be one of"),
    (lambda c: c["input_channels"][0].update(source_channel=7), "source_channel"),
    (lambda c: c["families"]["baseline"].update(batch_size=0), "batch_size"),
    (lambda c: c["families"]["sdmc"]["schedule"].update(learning_rate=-1), "learning_rate"),
    (lambda c: c["families"]["sdmc"]["diffusion"].update(prediction_type="x0"), "diffusion.prediction_type"),
    (lambda c: c.pop("families"), "missing families"),
])
def test_invalid_plans_edits_are_refused_with_the_field_named(dirs, edit, message):
    _, preprocessed = dirs
    plans = read_json(preprocessed / "sdmcPlans.json")
    edit(plans["configurations"]["2d"])
    with pytest.raises(SDMCError, match=message):
        validate_plans(plans, preprocessed / "sdmcPlans.json")


def test_replan_keeps_custom_configurations_and_inheritance_resolves(dirs, tmp_path):
    raw, preprocessed = dirs
    path = preprocessed / "sdmcPlans.json"
    original = path.read_bytes()
    try:
        plans = read_json(path)
        plans["configurations"]["2d_wide"] = {"inherits_from": "2d", "image_size": [64, 64], "latent_size": [8, 8]}
        save_plans(plans, path)
        pp.plan_experiment(2021)
        replanned = load_plans(path)
        wide = configuration(replanned, "2d_wide")
        assert wide["image_size"] == [64, 64] and wide["families"] == configuration(replanned, "2d")["families"]
    finally:
        path.write_bytes(original)


def test_planner_registry_by_name_and_module_path(dirs):
    raw, preprocessed = dirs
    with pytest.raises(SDMCError, match="unknown planner 'Nope'; available: SDMCCTWindowsPlanner, SDMCPlanner"):
        PLANNERS.get("Nope")
    ct_planner = PLANNERS.get("sdmcunet.experiment_planning.planners:SDMCCTWindowsPlanner")
    plans = ct_planner(read_json(preprocessed / "dataset_fingerprint.json"), read_json(raw / "dataset.json"),
                       RAW_NAME, None).plan()
    channels = plans["configurations"]["2d"]["input_channels"]
    assert [c["window"] for c in channels] == [[0, 80], [-20, 180], [28, 36]] and {c["source_channel"] for c in channels} == {0}


def test_gpu_plans_fit_the_memory_target(dirs):
    raw, preprocessed = dirs
    fingerprint, dataset_json = read_json(preprocessed / "dataset_fingerprint.json"), read_json(raw / "dataset.json")
    fingerprint = fingerprint | {"median_shape": [512, 512]}
    large = SDMCPlanner(fingerprint, dataset_json, RAW_NAME, gpu_memory_gb=80).plan()["configurations"]["2d"]
    assert large["image_size"] == [256, 256]
    assert large["families"]["sdmc"]["size_preset"] == "sd" and large["families"]["sdmc"]["batch_size"] == 4
    assert large["families"]["baseline"]["batch_size"] == 16
    small = SDMCPlanner(fingerprint, dataset_json, RAW_NAME, gpu_memory_gb=8).plan()["configurations"]["2d"]
    assert small["families"]["sdmc"]["size_preset"] == "small"  # the published model needs more than 8 GB
    with pytest.raises(SDMCError, match="raise -gpu_memory_target"):
        SDMCPlanner(fingerprint, dataset_json, RAW_NAME, gpu_memory_gb=0.2).plan()
    # Slices of 200 pixels: the sd UNet downsamples a latent 4 times, so images are multiples of 128 (not 192)
    enlarged = SDMCPlanner(fingerprint | {"median_shape": [200, 230]}, dataset_json, RAW_NAME, 80).plan()
    assert enlarged["configurations"]["2d"]["image_size"] == [256, 256]
    validate_plans(enlarged, preprocessed / "enlarged.json")


def test_gpu_planning_with_worker_processes_finishes(dirs, tmp_path):
    """Estimating the GPU memory builds networks in the planning process, which starts torch's OpenMP
    threads; preprocessing workers forked afterwards used to deadlock in their first image resize."""
    raw, _ = dirs
    command = [sys.executable, "-m", "sdmcunet.experiment_planning.plan_and_preprocess", "-d", "2021",
               "-gpu_memory_target", "80", "-np", "2"]
    environment = os.environ | {"SDMC_raw": str(raw.parent), "SDMC_preprocessed": str(tmp_path)}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    plans = load_plans(tmp_path / RAW_NAME / "sdmcPlans.json")
    assert plans["compute_target"]["device"] == "cuda"
    cases = read_json(tmp_path / RAW_NAME / "dataset_fingerprint.json")["cases"]
    assert all((tmp_path / RAW_NAME / "sdmcPlans_2d" / f"{case}.npy").is_file() for case in cases)


def test_splits_keep_patients_together_and_cover_every_case_once(dirs):
    raw, preprocessed = dirs
    splits = read_json(preprocessed / "splits_final.json")
    cases = read_json(preprocessed / "dataset_fingerprint.json")["cases"]
    patients = patient_of_each_case(raw, cases)
    assert len(splits) == 5 and len(set(patients.values())) == 10
    assert sorted(case for split in splits for case in split["val"]) == sorted(cases)
    for split in splits:
        assert set(split["train"]) | set(split["val"]) == set(cases)
        assert not {patients[c] for c in split["train"]} & {patients[c] for c in split["val"]}


def test_make_splits_stratifies_by_class():
    patients = {f"c{i}": f"p{i // 2}" for i in range(100)}  # 50 patients of two slices each
    classes = {case: [0, 1 + (int(case[1:]) // 2) % 2] if int(case[1:]) < 60 else [0] for case in patients}
    splits = make_splits(patients, classes)
    for label in (1, 2):
        per_fold = [sum(label in classes[c] for c in split["val"]) for split in splits]
        assert max(per_fold) - min(per_fold) <= 2, per_fold


def test_user_splits_are_respected_and_checked(dirs):
    raw, preprocessed = dirs
    cases = read_json(preprocessed / "dataset_fingerprint.json")["cases"]
    patients = patient_of_each_case(raw, cases)
    by_patient = sorted(set(patients.values()))
    own = [{"train": [c for c in cases if patients[c] != p], "val": [c for c in cases if patients[c] == p]} for p in by_patient]
    check_splits(own, patients, Path("splits_final.json"))
    leaking = [{"train": cases[1:], "val": cases[:1] + cases[1:2]}]
    with pytest.raises(SDMCError, match="patients on both sides"):
        check_splits(leaking, patients, Path("splits_final.json"))
    with pytest.raises(SDMCError, match="unknown cases"):
        check_splits([{"train": ["nope"], "val": []}], patients, Path("splits_final.json"))


def test_preprocessing_then_inverse_mapping_restores_the_labels(dirs):
    raw, preprocessed = dirs
    data = preprocessed / "sdmcPlans_2d"
    cases = training_cases(raw, load_dataset_json(raw))
    intersection = union = 0
    for case_id, case in cases.items():
        properties = read_json(data / f"{case_id}.json")
        restored = label_map_to_original(np.load(data / f"{case_id}_seg.npy"), Geometry.from_json(properties["geometry"]), 3)
        original = read_raw_image(case.label)[0]
        assert restored.shape == original.shape
        assert set(np.unique(restored)) <= set(np.unique(original)) | {0}
        intersection += np.sum((restored == original) & (original > 0))
        union += np.sum((restored > 0) | (original > 0))
        image = np.load(data / f"{case_id}.npy")
        assert image.dtype == np.float16 and image.shape == (1, 96, 96) and 0 <= image.min() and image.max() <= 1
    assert intersection / union > 0.85  # resampled to the plan's size and back


@pytest.mark.parametrize("size,padding", [((50, 50), (0, 0, 5, 5)), ((50, 40), (0, 0, 0, 0)),
                                          ((60, 40), (5, 5, 0, 0))])
def test_geometry_roundtrip_is_exact_without_resizing(size, padding):
    """The 50 x 40 crop is padded (centred) to the aspect ratio of the network's (rows, columns) input."""
    rng = np.random.default_rng(0)
    label_map = np.zeros((70, 50), dtype=np.uint8)
    label_map[10:60, 5:45] = rng.integers(0, 3, size=(50, 40))
    geometry = plan_geometry(label_map.shape, (10, 60, 5, 45), size=size)
    assert geometry.padding == padding and geometry.network_shape == size
    network = label_to_network(label_map.astype(np.int64), geometry, 3)
    assert network.shape == size
    np.testing.assert_array_equal(label_map_to_original(network, geometry, 3), label_map)


def test_preprocessing_skips_up_to_date_cases_and_redoes_changed_ones(dirs):
    raw, preprocessed = dirs
    data = preprocessed / "sdmcPlans_2d"
    dataset = load_dataset_json(raw)
    cases = training_cases(raw, dataset)
    config = PlansManager.load(preprocessed / "sdmcPlans.json").configuration("2d")
    from sdmcunet.preprocessing.preprocessor import preprocess_dataset

    run = lambda: preprocess_dataset(cases, data, preprocessed / "gt_segmentations", config, dataset.channel_names, 3)
    assert run() == 0
    victim = next(iter(cases))
    (data / f"{victim}.json").unlink()  # as if killed before the case finished
    assert run() == 1 and (data / f"{victim}.json").is_file()


def test_holdout_moves_whole_patients_once(dirs, tmp_path):
    raw, _ = dirs
    copy = tmp_path / RAW_NAME
    shutil.copytree(raw, copy)
    held_out = move_holdout(copy, 0.3)
    remaining = sorted(p.name[: -len(".nii.gz")] for p in (copy / "labelsTr").iterdir())
    patients = patient_of_each_case(copy, held_out + remaining)
    assert held_out and not {patients[c] for c in held_out} & {patients[c] for c in remaining}
    assert sorted(p.name for p in (copy / "labelsTs").iterdir()) == sorted(f"{c}.nii.gz" for c in held_out)
    assert read_json(copy / "dataset.json")["numTraining"] == len(remaining)
    assert move_holdout(copy, 0.3) == held_out and len(list((copy / "labelsTr").iterdir())) == len(remaining)


def test_a_dataset_failing_verification_stops_planning_before_anything_is_written(dirs, monkeypatch, capsys, tmp_path):
    raw, _ = dirs
    broken = tmp_path / "raw" / RAW_NAME
    shutil.copytree(raw, broken)
    next((broken / "imagesTr").glob("*_0001.nii.gz")).unlink()
    monkeypatch.setenv("SDMC_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("SDMC_preprocessed", str(tmp_path / "preprocessed"))
    assert pp.main(["-d", "2021", "-np", "1"]) == 2
    error = capsys.readouterr().err
    assert "failed verification" in error and "channel file(s) [1] missing" in error and "numTraining" not in error
    assert not (tmp_path / "preprocessed").exists()


def test_bad_input_gives_clear_errors(dirs, monkeypatch, capsys, tmp_path):
    raw, preprocessed = dirs
    assert pp.main(["-d", "999"]) == 2
    assert "no dataset with id 999" in capsys.readouterr().err
    assert pp.plan_main(["-d", "2021", "-pl", "NoSuchPlanner"]) == 2
    assert "available: SDMCCTWindowsPlanner, SDMCPlanner" in capsys.readouterr().err
    assert pp.preprocess_main(["-d", "2021", "-p", "missingPlans"]) == 2
    assert "run sdmc_plan_and_preprocess" in capsys.readouterr().err
    import sdmcunet.preprocessing.preprocessor as preprocessor

    monkeypatch.setattr(preprocessor.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 1024))
    monkeypatch.setenv("SDMC_preprocessed", str(tmp_path))
    shutil.copytree(preprocessed, tmp_path / RAW_NAME, ignore=shutil.ignore_patterns("sdmcPlans_2d"))
    assert pp.preprocess_main(["-d", "2021", "-np", "1"]) == 2
    assert "only 0.00 GB are free" in capsys.readouterr().err
    assert not any((tmp_path / RAW_NAME / "sdmcPlans_2d").iterdir())
