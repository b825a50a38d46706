"""sdmc_ensemble, small-component postprocessing and sdmc_find_best_configuration on fake model folders."""

import json

import numpy as np
import pytest
from fake_results import NIFTI, confident, label_map, make_dataset, make_model, model_folder, write_label_maps

from sdmcunet.ensembling.ensemble import main as ensemble
from sdmcunet.evaluation.find_best_configuration import main as find_best
from sdmcunet.imageio import read_nifti
from sdmcunet.imageio.label_map_folders import read_label_map
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC, NON_STROKE
from sdmcunet.postprocessing.remove_small_components import main as apply_postprocessing
from sdmcunet.postprocessing.remove_small_components import remove_small_components
from sdmcunet.utils.cli import EXIT_USER_ERROR

FOLDS = [[f"case_{fold}{index}" for index in range(2)] for fold in range(5)]
CASES = [case for fold in FOLDS for case in fold]


def error_message(capsys) -> str:
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err
    return err[err.index("error: "):]


# --- sdmc_ensemble -----------------------------------------------------------------------------

def prediction_folder(folder, rng, ending, spacing=(0.5, 0.8)):
    """Random probabilities (float16 npz) and their argmax label maps, for three 12x10 cases."""
    probabilities = {f"c{index}": rng.dirichlet(np.ones(3), size=(12, 10)).transpose(2, 0, 1).astype(np.float16)
                     for index in range(3)}
    write_label_maps(folder, {case: p.argmax(0).astype(np.uint8) for case, p in probabilities.items()}, ending, spacing)
    for case, p in probabilities.items():
        np.savez_compressed(folder / f"{case}.npz", probabilities=p)
    return probabilities


@pytest.mark.parametrize("ending", [".png", NIFTI])
def test_ensemble_averages_the_probabilities_exactly(tmp_path, ending):
    rng = np.random.default_rng(0)
    inputs = [prediction_folder(tmp_path / name, rng, ending) for name in ("one", "two", "three")]
    output = tmp_path / "ensemble"
    arguments = ["-i", *(str(tmp_path / name) for name in ("one", "two", "three")), "-o", str(output)]
    assert ensemble([*arguments, "--save_probabilities", "-np", "2"]) == 0
    for case in inputs[0]:
        expected = np.mean([folder[case].astype(np.float32) for folder in inputs], axis=0)
        saved = np.load(output / f"{case}.npz")["probabilities"]
        assert saved.dtype == np.float16 and np.array_equal(saved, expected.astype(np.float16))
        labels, spacing = read_label_map(output / f"{case}{ending}")
        assert np.array_equal(labels, expected.argmax(0))
        if ending == NIFTI:  # the spacing of the first folder's label map
            assert read_nifti(output / f"{case}{ending}")[1] == pytest.approx((0.5, 0.8))
    written = {path.name for path in output.iterdir()}
    case_files = {f"c{index}{suffix}" for index in range(3) for suffix in (ending, ".npz")}
    assert written == case_files | {"ensemble_info.json"}


def test_ensemble_refuses_folders_with_different_cases_or_no_label_map(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for name in ("one", "two"):
        prediction_folder(tmp_path / name, rng, ".png")
    same_folder = ["-i", str(tmp_path / "one"), str(tmp_path / "two"), "-o", str(tmp_path / "one"), "-np", "1"]
    assert ensemble(same_folder) == EXIT_USER_ERROR
    assert "must not be one of the input folders" in error_message(capsys)
    (tmp_path / "two" / "c1.npz").unlink()
    arguments = ["-i", str(tmp_path / "one"), str(tmp_path / "two"), "-o", str(tmp_path / "out"), "-np", "1"]
    assert ensemble(arguments) == EXIT_USER_ERROR
    message = error_message(capsys)
    assert f"{tmp_path / 'two'} lacks 1: c1" in message
    (tmp_path / "one" / "c1.npz").unlink()
    (tmp_path / "one" / "c2.png").unlink()
    assert ensemble(arguments) == EXIT_USER_ERROR
    assert "lacks the label map" in error_message(capsys)
    assert not (tmp_path / "out").exists()


# --- removing small components -----------------------------------------------------------------

def test_components_are_eight_connected_and_per_class():
    labels = label_map((8, 8), IS=np.s_[0:1, 0:1], HS=np.s_[5:6, 5:6])
    labels[1, 1] = ISCHEMIC  # touches (0, 0) diagonally: one component of 2 pixels
    labels[4, 0] = ISCHEMIC  # alone
    cleaned = remove_small_components(labels, {ISCHEMIC: 2, HEMORRHAGIC: 0})
    assert cleaned[0, 0] == cleaned[1, 1] == ISCHEMIC and cleaned[4, 0] == NON_STROKE
    assert cleaned[5, 5] == HEMORRHAGIC
    assert np.array_equal(remove_small_components(labels, {ISCHEMIC: 3}) == ISCHEMIC, np.zeros((8, 8), bool))


# --- sdmc_find_best_configuration --------------------------------------------------------------

LESIONS = label_map(IS=np.s_[2:7, 2:7], HS=np.s_[9:14, 9:14])


def missing_one_class(reference: np.ndarray, missed: int) -> np.ndarray:
    """Confident (0.9) everywhere except on the `missed` class, where background wins 0.55 to 0.45."""
    probabilities = confident(reference)
    probabilities[:, reference == missed] = np.array([0.55, 0.0, 0.0])[:, None]
    probabilities[missed, reference == missed] = 0.45
    return probabilities


def two_complementary_models():
    """Alpha misses every HS lesion, Bravo every IS one: 0.5 each; their mean gets both right: 1.0."""
    make_dataset(dict.fromkeys(CASES, LESIONS), FOLDS)
    make_model("AlphaTrainer", FOLDS, dict.fromkeys(CASES, missing_one_class(LESIONS, HEMORRHAGIC)))
    make_model("BravoTrainer", FOLDS, dict.fromkeys(CASES, missing_one_class(LESIONS, ISCHEMIC)))


def read_results():
    folder = model_folder("AlphaTrainer").parent
    return json.loads((folder / "find_best_configuration.json").read_text()), \
        (folder / "inference_instructions.txt").read_text()


def test_an_ensemble_that_is_truly_better_is_chosen():
    two_complementary_models()
    # its validation scores mask reconstructions, not segmentations: never a candidate
    make_model("MaskAutoencoderTrainer", FOLDS, {case: confident(label_map()) for case in CASES})
    assert find_best(["-d", "2021", "-np", "1"]) == 0
    result, instructions = read_results()
    scores = {candidate["name"]: candidate["DSC_Mean"] for candidate in result["candidates"]}
    ensemble_name = ("ensemble___AlphaTrainer__sdmcPlans__2d___BravoTrainer__sdmcPlans__2d___"
                     "crossval_results_folds_0_1_2_3_4")
    assert scores == pytest.approx({"AlphaTrainer__sdmcPlans__2d": 0.5, "BravoTrainer__sdmcPlans__2d": 0.5,
                                    ensemble_name: 1.0})
    assert result["best"]["name"] == ensemble_name and result["best"]["members"] == ["AlphaTrainer", "BravoTrainer"]
    ensemble_folder = model_folder("AlphaTrainer").parent / "ensembles" / ensemble_name
    assert len(list(ensemble_folder.glob(f"*{NIFTI}"))) == len(CASES)
    assert json.loads((ensemble_folder / "summary.json").read_text())["stroke2021"]["DSC"]["Mean"] == 1.0
    assert (model_folder("AlphaTrainer") / "crossval_results_folds_0_1_2_3_4" / "summary.json").is_file()
    assert (ensemble_folder / "postprocessing.json").is_file()  # perfect already: nothing to remove
    assert instructions.splitlines()[3:] == [
        "sdmc_predict -i INPUT_FOLDER -o OUTPUT_FOLDER_MODEL_1 -d 2021 -tr AlphaTrainer -f 0 1 2 3 4 -p sdmcPlans "
        "-c 2d --save_probabilities",
        "sdmc_predict -i INPUT_FOLDER -o OUTPUT_FOLDER_MODEL_2 -d 2021 -tr BravoTrainer -f 0 1 2 3 4 -p sdmcPlans "
        "-c 2d --save_probabilities",
        "sdmc_ensemble -i OUTPUT_FOLDER_MODEL_1 OUTPUT_FOLDER_MODEL_2 -o OUTPUT_FOLDER",
        "",
        "Removing small components did not improve the cross-validation: no postprocessing to apply.",
    ]


def test_a_single_model_that_is_truly_better_is_chosen_over_its_ensemble():
    """Charlie is right with 0.7 but one HS column short; Delta says background (0.95) everywhere, and
    averaged with it Charlie's lesions fall to 0.36: the ensemble finds nothing."""
    make_dataset(dict.fromkeys(CASES, LESIONS), FOLDS)
    prediction = LESIONS.copy()
    prediction[9:14, 13] = NON_STROKE
    make_model("CharlieTrainer", FOLDS, dict.fromkeys(CASES, confident(prediction, 0.7)))
    make_model("DeltaTrainer", FOLDS, dict.fromkeys(CASES, confident(label_map(), 0.95)))
    assert find_best(["-d", "2021", "-tr", "CharlieTrainer", "DeltaTrainer", "-np", "1"]) == 0
    result, instructions = read_results()
    scores = [candidate["DSC_Mean"] for candidate in result["candidates"]]
    assert scores == pytest.approx([(1 + 2 * 20 / 45) / 2, 0.0, 0.0])
    assert result["best"]["members"] == ["CharlieTrainer"]
    assert instructions.splitlines()[3] == \
        "sdmc_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d 2021 -tr CharlieTrainer -f 0 1 2 3 4 -p sdmcPlans -c 2d"
    assert "sdmc_ensemble" not in instructions


SMALL_LESIONS = label_map(IS=np.s_[2:5, 2:5], HS=np.s_[10:13, 10:13])  # 9 pixels each


@pytest.mark.parametrize("helps", [True, False])
def test_postprocessing_is_kept_only_when_it_helps(helps, tmp_path):
    """Spurious 2x2 blobs next to a large lesion: removing < 5 px helps. Small real lesions predicted
    right: removing < 10 px or more deletes them, < 5 px changes nothing, so nothing is kept."""
    if helps:
        references = dict.fromkeys(CASES, label_map(IS=np.s_[2:8, 2:8]))
        prediction = label_map(IS=np.s_[2:8, 2:8])
        prediction[12:14, 12:14] = prediction[0:2, 12:14] = ISCHEMIC
    else:
        references, prediction = dict.fromkeys(CASES, SMALL_LESIONS), SMALL_LESIONS
    make_dataset(references, FOLDS)
    make_model("EchoTrainer", FOLDS, dict.fromkeys(CASES, confident(prediction)))
    assert find_best(["-d", "2021", "-tr", "EchoTrainer", "-np", "1"]) == 0
    result, instructions = read_results()
    postprocessing_file = model_folder("EchoTrainer") / "postprocessing.json"
    postprocessing = json.loads(postprocessing_file.read_text())
    thresholds = postprocessing["remove_components_smaller_than"]
    assert result["postprocessing"]["remove_components_smaller_than"] == thresholds
    if helps:
        assert thresholds == {"1": 5, "2": 0}
        assert postprocessing["DSC_Mean_without"] == pytest.approx(2 * 36 / (44 + 36))
        assert postprocessing["DSC_Mean_with"] == 1.0
        assert instructions.splitlines()[-1] == ("sdmc_apply_postprocessing -i OUTPUT_FOLDER -o "
                                                 f"OUTPUT_FOLDER_POSTPROCESSED -pp {postprocessing_file.resolve()}")
        # The same file applied to a folder of PNG predictions.
        write_label_maps(tmp_path / "in", {"x": prediction})
        assert apply_postprocessing(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                     "-pp", str(postprocessing_file), "-np", "1"]) == 0
        assert np.array_equal(read_label_map(tmp_path / "out" / "x.png")[0], references[CASES[0]])
    else:
        assert thresholds == {"1": 0, "2": 0}
        assert postprocessing["DSC_per_candidate"]["IS"]["10"] == 0.0
        assert postprocessing["DSC_Mean_with"] == postprocessing["DSC_Mean_without"] == 1.0
        assert "sdmc_apply_postprocessing" not in instructions


def test_a_malformed_postprocessing_file_is_refused(tmp_path, capsys):
    write_label_maps(tmp_path / "in", {"x": SMALL_LESIONS})
    (tmp_path / "pp.json").write_text(json.dumps({"remove_components_smaller_than": {"1": -5}}))
    assert apply_postprocessing(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                 "-pp", str(tmp_path / "pp.json")]) == EXIT_USER_ERROR
    assert "pp.json" in error_message(capsys) and not (tmp_path / "out").exists()


# --- bad input ---------------------------------------------------------------------------------

def test_missing_probabilities_name_the_training_command(capsys):
    two_complementary_models()
    (model_folder("BravoTrainer") / "fold_3" / "validation" / "case_31.npz").unlink()
    assert find_best(["-d", "2021", "-np", "1"]) == EXIT_USER_ERROR
    message = error_message(capsys)
    assert "fold_3" in message and "case_31" in message
    assert "sdmc_train 2021 2d 3 -tr BravoTrainer -p sdmcPlans --val --npz" in message
    assert not (model_folder("AlphaTrainer").parent / "find_best_configuration.json").exists()


def test_missing_folds(capsys):
    two_complementary_models()
    (model_folder("BravoTrainer") / "fold_4" / "validation").rename(model_folder("BravoTrainer") / "fold_4" / "old")
    assert find_best(["-d", "2021", "-tr", "AlphaTrainer", "BravoTrainer", "-np", "1"]) == EXIT_USER_ERROR
    assert "sdmc_train 2021 2d 4 -tr BravoTrainer -p sdmcPlans" in error_message(capsys)
    assert find_best(["-d", "2021", "-np", "1"]) == 0  # found, not named: Bravo is left out, and said so
    result, _ = read_results()
    assert [candidate["name"] for candidate in result["candidates"]] == ["AlphaTrainer__sdmcPlans__2d"]
    assert result["left_out_models"] == {"BravoTrainer__sdmcPlans__2d": {"folds_without_validation": [4]}}
    assert find_best(["-d", "2021", "-tr", "FoxtrotTrainer", "-np", "1"]) == EXIT_USER_ERROR
    assert "sdmc_train 2021 2d 0 -tr FoxtrotTrainer -p sdmcPlans" in error_message(capsys)
