"""sdmc_evaluate: agreement with MONAI, the tolerant mIoU by hand, folders, models, bad input."""

import json
import logging

import numpy as np
import pytest
from fake_results import NIFTI, label_map, make_dataset, model_folder, write_label_maps
from monai.metrics import DiceMetric, MeanIoU
from test_metrics import one_hot, random_batch

from sdmcunet.evaluation.evaluate_predictions import main as evaluate
from sdmcunet.evaluation.evaluate_predictions import score_pair
from sdmcunet.results.trained_model import CasePair
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC
from sdmcunet.utils.cli import EXIT_USER_ERROR


def read_summary(path):
    return json.loads(path.read_text())


def error_message(capsys) -> str:
    """What the command printed from 'error: ' on (stderr also carries the progress bar)."""
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err
    return err[err.index("error: "):]


def random_folders(tmp_path, ending=".png"):
    """The metrics tests' random batch (blobs, noise, lesion-free slices) as two folders of label maps."""
    predictions, references = random_batch(np.random.default_rng(3))
    names = [f"slice_{index:02d}" for index in range(len(references))]
    write_label_maps(tmp_path / "ref", dict(zip(names, (r.astype(np.uint8) for r in references))), ending)
    write_label_maps(tmp_path / "pred", dict(zip(names, (p.astype(np.uint8) for p in predictions))), ending)
    return names, predictions, references


# --- agreement with MONAI and with an independent mIoU --------------------------------------------

def test_scores_agree_with_monai_per_slice_per_class_and_as_class_means(tmp_path):
    names, predictions, references = random_folders(tmp_path)
    assert evaluate(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-np", "2"]) == 0
    summary = read_summary(tmp_path / "pred" / "summary.json")
    monai_scores = {
        "DSC": DiceMetric(include_background=True, reduction="none", ignore_empty=True),
        "IoU": MeanIoU(include_background=True, reduction="none", ignore_empty=True),
    }
    for metric, monai_metric in monai_scores.items():
        # NaN where the reference lacks the class: exactly the slices the protocol skips.
        expected = monai_metric(one_hot(predictions), one_hot(references)).numpy()
        ours = np.stack([score_pair(CasePair(name, tmp_path / "ref" / f"{name}.png", tmp_path / "pred" / f"{name}.png"))
                         .slice_scores[metric] for name in names])
        np.testing.assert_allclose(ours, expected, rtol=1e-5)
        for label, abbreviation in enumerate(("NS", "IS", "HS")):
            present = ~np.isnan(expected[:, label])
            class_mean = expected[present, label].mean()
            assert summary["stroke2021"][metric][abbreviation] == pytest.approx(class_mean, rel=1e-5)
            assert summary["stroke2021"]["n_slices"][abbreviation] == np.count_nonzero(present)
        lesion_mean = np.nanmean(expected[:, 1:], axis=0).mean()
        assert summary["stroke2021"][metric]["Mean"] == pytest.approx(lesion_mean, rel=1e-5)
    assert summary["stroke2021"]["n_slices"]["HS"] < len(names)  # some slices really are skipped


def tolerant_iou_by_shifts(prediction: np.ndarray, reference: np.ndarray) -> float:
    """|P and dilate(G)| / |erode(G) or P| with the 9 shifts of a zero-padded G (3x3 ones); 0 if 0/0."""
    padded = np.pad(reference, 1)
    rows, columns = reference.shape
    shifted = [padded[1 + dr:1 + dr + rows, 1 + dc:1 + dc + columns] for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    dilated, eroded = np.any(shifted, axis=0), np.all(shifted, axis=0)
    denominator = np.count_nonzero(eroded | prediction)
    return np.count_nonzero(prediction & dilated) / denominator if denominator else 0.0


def test_miou_agrees_with_an_independent_implementation(tmp_path):
    _, predictions, references = random_folders(tmp_path, NIFTI)
    assert evaluate(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-np", "1"]) == 0
    miou = read_summary(tmp_path / "pred" / "summary.json")["stroke2021"]["mIoU"]
    for label, abbreviation in ((ISCHEMIC, "IS"), (HEMORRHAGIC, "HS")):
        expected = [tolerant_iou_by_shifts(p == label, r == label) for p, r in zip(predictions, references)
                    if (r == label).any()]
        assert miou[abbreviation] == pytest.approx(np.mean(expected))


# --- the tolerant mIoU by hand, through the command, on PNG and NIfTI --------------------------

HAND_MADE = {  # case: (prediction, reference), 8x8
    # G = 4x4 square; P = the same shifted up one row. G+ = rows/cols 1..6 holds all of P (16);
    # G- = the inner 2x2, inside P: |G- or P| = 16. mIoU = 1; DSC = 2*12/32 = 0.75; IoU = 12/20.
    "a_shifted": (label_map((8, 8), IS=np.s_[1:5, 2:6]), label_map((8, 8), IS=np.s_[2:6, 2:6])),
    # G = 3x5 HS block, G- = its middle row of 3; P = a 2x2 HS block in the corner, touching G+ at (1, 1).
    # mIoU = 1 / (3 + 4) = 1/7; DSC = IoU = 0.
    "b_off_target": (label_map((8, 8), HS=np.s_[0:2, 0:2]), label_map((8, 8), HS=np.s_[2:5, 2:7])),
    # Wrong class: no IS predicted, G- = the centre pixel: IS mIoU = 0 / 1 = 0. HS absent: skipped.
    "c_wrong_class": (label_map((8, 8), HS=np.s_[2:5, 2:5]), label_map((8, 8), IS=np.s_[2:5, 2:5])),
    # No lesion in the reference: skipped for IS and HS, whatever is predicted (a false positive IS).
    "d_no_lesion": (label_map((8, 8), IS=np.s_[4:7, 4:7]), label_map((8, 8))),
    # A one-pixel-wide IS line erodes away and nothing is predicted: |G- or P| = 0, so mIoU = 0.
    "e_thin": (label_map((8, 8)), label_map((8, 8), IS=np.s_[3:4, 1:7])),
    "f_empty": (label_map((8, 8)), label_map((8, 8))),
}


@pytest.mark.parametrize("ending", [".png", NIFTI])
def test_hand_computed_example_through_the_command(tmp_path, ending):
    write_label_maps(tmp_path / "pred", {case: pair[0] for case, pair in HAND_MADE.items()}, ending, (0.5, 0.8))
    write_label_maps(tmp_path / "ref", {case: pair[1] for case, pair in HAND_MADE.items()}, ending, (0.5, 0.8))
    output = tmp_path / "elsewhere" / "scores.json"
    arguments = ["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(output), "-np", "1"]
    assert evaluate(arguments) == 0
    assert not (tmp_path / "pred" / "summary.json").exists()
    summary = read_summary(output)
    block = summary["stroke2021"]
    assert block["n_slices"] == {"NS": 6, "IS": 3, "HS": 1}  # IS: a, c, e; HS: b
    assert block["mIoU"]["IS"] == pytest.approx((1 + 0 + 0) / 3)
    assert block["mIoU"]["HS"] == pytest.approx(1 / 7)
    assert block["mIoU"]["Mean"] == pytest.approx((1 / 3 + 1 / 7) / 2)
    assert block["DSC"]["IS"] == pytest.approx(0.75 / 3) and block["IoU"]["IS"] == pytest.approx(0.6 / 3)
    assert block["DSC"]["HS"] == 0.0
    # The false positives the protocol cannot see: IS on d (of b, d, f); HS on c (of a, c, d, e, f).
    assert summary["false_positive_slice_rate"] == pytest.approx({"IS": 1 / 3, "HS": 1 / 5})
    assert summary["left_out"]["count"] == 0
    per_case = {entry["case"]: entry["metrics"] for entry in summary["metric_per_case"]}
    assert list(per_case) == sorted(HAND_MADE)
    assert {key: per_case["a_shifted"]["1"][key] for key in ("TP", "FP", "FN", "TN", "n_pred", "n_ref")} == {
        "TP": 12, "FP": 4, "FN": 4, "TN": 44, "n_pred": 16, "n_ref": 16}
    # Rows are 0.5 mm apart in NIfTI; PNG has no spacing (1 mm): the one-row shift gives HD95 = 1 row.
    assert per_case["a_shifted"]["1"]["HD95"] == (0.5 if ending == NIFTI else 1.0)


# --- bad input ---------------------------------------------------------------------------------

def hand_made_folders(tmp_path, ending=".png"):
    write_label_maps(tmp_path / "pred", {case: pair[0] for case, pair in HAND_MADE.items()}, ending)
    write_label_maps(tmp_path / "ref", {case: pair[1] for case, pair in HAND_MADE.items()}, ending)
    return ["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-np", "1"]


def spoil_missing(tmp_path):
    (tmp_path / "pred" / "c_wrong_class.png").unlink()
    write_label_maps(tmp_path / "pred", {"z_extra": label_map((8, 8))})
    return ["c_wrong_class.png", "z_extra.png"]


def spoil_shape(tmp_path):
    write_label_maps(tmp_path / "pred", {"a_shifted": label_map((8, 9)), "e_thin": label_map((9, 8))})
    return ["a_shifted.png", "e_thin.png", "(8, 9)"]


def spoil_labels(tmp_path):
    write_label_maps(tmp_path / "pred", {"b_off_target": np.full((8, 8), 3, dtype=np.uint8)})
    return ["b_off_target.png", "0..2", "[3]"]


def spoil_file(tmp_path):
    (tmp_path / "ref" / "d_no_lesion.png").write_bytes(b"not a png")
    return ["d_no_lesion.png", "cannot be read"]


@pytest.mark.parametrize("spoil", [spoil_missing, spoil_shape, spoil_labels, spoil_file])
def test_bad_input_is_refused_naming_the_files(tmp_path, capsys, spoil):
    arguments = hand_made_folders(tmp_path)
    named = spoil(tmp_path)
    assert evaluate(arguments) == EXIT_USER_ERROR
    message = error_message(capsys)
    assert all(name in message for name in named), message
    assert not (tmp_path / "pred" / "summary.json").exists()


def test_ignore_missing_evaluates_the_rest_and_says_how_many_were_left_out(tmp_path, caplog, capsys):
    arguments = hand_made_folders(tmp_path)
    spoil_missing(tmp_path)
    assert evaluate(arguments) == EXIT_USER_ERROR
    assert "--ignore_missing" in error_message(capsys)
    with caplog.at_level(logging.WARNING):
        assert evaluate([*arguments, "--ignore_missing"]) == 0
    summary = read_summary(tmp_path / "pred" / "summary.json")
    assert summary["left_out"]["count"] == 2 and summary["left_out"]["cases"] == ["c_wrong_class", "z_extra"]
    assert len(summary["metric_per_case"]) == len(HAND_MADE) - 1
    assert "left out 2 of 7 cases" in caplog.text


def test_contradictory_or_incomplete_arguments_are_refused(tmp_path):
    for arguments in (["-ref", str(tmp_path)], ["-ref", "a", "-pred", "b", "-d", "2021"], ["-d", "2021"],
                      ["-d", "2021", "-tr", "T", "-o", "x.json"], ["-ref", "a", "-pred", "b", "-f", "0"]):
        with pytest.raises(SystemExit) as stop:
            evaluate(arguments)
        assert stop.value.code == 2


# --- a trained model's folds -------------------------------------------------------------------

FOLDS = [["p0", "p1"], ["q0", "q1", "q2"]]


def model_setup():
    """Fold 0: two perfect IS slices; fold 1: three IS slices, one hit and two misses.

    Pooled, IS DSC = 3/5; the mean of the fold means would be (1 + 1/3) / 2 = 2/3.
    """
    lesion = label_map((8, 8), IS=np.s_[2:6, 2:6])
    references = {case: lesion for fold in FOLDS for case in fold}
    make_dataset(references, FOLDS)
    predictions = {"p0": lesion, "p1": lesion, "q0": lesion, "q1": label_map((8, 8)), "q2": label_map((8, 8))}
    for fold, cases in enumerate(FOLDS):
        write_label_maps(model_folder("AlphaTrainer") / f"fold_{fold}" / "validation",
                         {case: predictions[case] for case in cases}, NIFTI)


def test_fold_and_cross_validation_summaries():
    model_setup()
    folder = model_folder("AlphaTrainer")
    assert evaluate(["-d", "2021", "-tr", "AlphaTrainer", "-f", "0", "-np", "1"]) == 0
    fold_summary = read_summary(folder / "fold_0" / "validation" / "summary.json")
    assert [entry["case"] for entry in fold_summary["metric_per_case"]] == ["p0", "p1"]
    assert fold_summary["stroke2021"]["DSC"]["IS"] == 1.0
    assert evaluate(["-d", "2021", "-tr", "AlphaTrainer", "-np", "1"]) == 0  # every fold found
    crossval = read_summary(folder / "crossval_results_folds_0_1" / "summary.json")
    assert crossval["stroke2021"]["n_slices"]["IS"] == 5
    assert crossval["stroke2021"]["DSC"]["IS"] == pytest.approx(3 / 5)  # all slices together, not 2/3


def test_model_errors_name_the_command_that_makes_the_missing_files(capsys):
    model_setup()
    assert evaluate(["-d", "2021", "-tr", "BetaTrainer", "-np", "1"]) == EXIT_USER_ERROR
    assert "sdmc_train 2021 2d FOLD -tr BetaTrainer -p sdmcPlans" in error_message(capsys)
    assert evaluate(["-d", "2021", "-tr", "AlphaTrainer", "-f", "0", "2", "-np", "1"]) == EXIT_USER_ERROR
    message = error_message(capsys)
    assert "fold_2" in message and "sdmc_train 2021 2d 2 -tr AlphaTrainer -p sdmcPlans" in message
    (model_folder("AlphaTrainer") / "fold_1" / "validation" / f"q1{NIFTI}").unlink()
    assert evaluate(["-d", "2021", "-tr", "AlphaTrainer", "-np", "1"]) == EXIT_USER_ERROR
    message = error_message(capsys)
    assert f"q1{NIFTI}" in message and "--val" in message
    assert not (model_folder("AlphaTrainer") / "crossval_results_folds_0_1").exists()
