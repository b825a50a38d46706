"""A non-square plan: `image_size` [128, 96] (rows, columns) through preprocessing, augmentation, the
networks (a U-Net and SDMC-Seg), training with its validation, prediction and the inverse mapping."""

import numpy as np
import pytest
import torch
from conftest import make_preprocessed_dataset, paths_set

from sdmcunet.experiment_planning import plan_and_preprocess
from sdmcunet.experiment_planning.plans import load_plans, save_plans
from sdmcunet.imageio import read_nifti
from sdmcunet.inference import predict
from sdmcunet.preprocessing.geometry import Geometry, label_map_to_original
from sdmcunet.training.trainers import TRAINERS
from sdmcunet.utils.files import read_json

PLANS = "nonSquarePlans"
SIZE = (128, 96)
NAME = "Dataset2021_Stroke2021"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """The CPU plans with a [128, 96] input, preprocessed."""
    root = tmp_path_factory.mktemp("non_square")
    preprocessed = make_preprocessed_dataset(root, 5, 7, 64, "--cpu")
    plans = load_plans(preprocessed / "sdmcPlans.json")
    plans["plans_name"] = PLANS
    plans["configurations"]["2d"].update(data_identifier=f"{PLANS}_2d", image_size=list(SIZE),
                                         latent_size=[side // 8 for side in SIZE])
    save_plans(plans, preprocessed / f"{PLANS}.json")
    with paths_set(SDMC_raw=root / "raw", SDMC_preprocessed=root / "preprocessed"):
        assert plan_and_preprocess.preprocess_main(["-d", "2021", "-p", PLANS, "-np", "1"]) == 0
    return root, preprocessed


def test_preprocessed_slices_have_the_plans_rows_and_columns_and_map_back(planned):
    root, preprocessed = planned
    data = preprocessed / f"{PLANS}_2d"
    cases = sorted(path.stem for path in data.glob("*.json"))
    assert cases
    for case in cases:
        image, labels = np.load(data / f"{case}.npy"), np.load(data / f"{case}_seg.npy")
        assert image.shape[1:] == SIZE and labels.shape[-2:] == SIZE
        geometry = Geometry.from_json(read_json(data / f"{case}.json")["geometry"])
        original = read_nifti(root / "raw" / NAME / "labelsTr" / f"{case}.nii.gz")[0]
        restored = label_map_to_original(labels.reshape(SIZE), geometry, 3)
        assert restored.shape == original.shape
        assert np.mean(restored == original) > 0.995  # resized 64 -> 128 rows and back


def test_augmented_batches_and_both_network_families_run_at_rows_by_columns(planned, monkeypatch, tmp_path):
    root, preprocessed = planned
    monkeypatch.setenv("SDMC_results", str(tmp_path / "results"))
    plans = load_plans(preprocessed / f"{PLANS}.json")
    for name in ("UNetTrainer", "SDMCPretrainedTrainer"):
        trainer = TRAINERS.get(name)(plans, "2d", 0, preprocessed, "cpu", 1, 2, num_loader_workers=0)
        trainer.run_training()
        summary = trainer.final_validation()
        assert read_json(summary)["metric_per_case"]
        batch = next(trainer._training_batches(trainer_cases(trainer)))
        assert batch["data"].shape[-2:] == SIZE and batch["seg"].shape[-2:] == SIZE
        with torch.no_grad():
            probabilities = trainer.predict_probabilities(torch.as_tensor(batch["data"][:1]).float())
        assert probabilities.shape == (1, 3, *SIZE)


def trainer_cases(trainer):
    from sdmcunet.preprocessing.preprocessed_cases import PreprocessedCases

    train_cases, _ = trainer.split()
    return PreprocessedCases(trainer.preprocessed_folder / trainer.configuration.data_identifier, train_cases)


def test_prediction_of_a_non_square_model_is_in_the_original_geometry(planned, monkeypatch, tmp_path):
    root, preprocessed = planned
    monkeypatch.setenv("SDMC_results", str(tmp_path / "results"))
    monkeypatch.setenv("SDMC_preprocessed", str(preprocessed.parent))
    plans = load_plans(preprocessed / f"{PLANS}.json")
    TRAINERS.get("UNetTrainer")(plans, "2d", 0, preprocessed, "cpu", 1, 2, num_loader_workers=0).run_training()
    images = root / "raw" / NAME / "imagesTr"
    output = tmp_path / "predictions"
    assert predict.main(["-i", str(images), "-o", str(output), "-d", "2021", "-tr", "UNetTrainer", "-p", PLANS,
                         "-f", "0", "-np", "0"]) == 0
    for label_map in output.glob("*.nii.gz"):
        image = read_nifti(images / label_map.name.replace(".nii.gz", "_0000.nii.gz"))[0]
        assert read_nifti(label_map)[0].shape == image.shape
