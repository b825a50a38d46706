"""Metrics: hand-computed Stroke2021 scores, agreement with MONAI, HD95, the summary layout."""

import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, MeanIoU, compute_hausdorff_distance
from scipy import ndimage

from sdmcunet.evaluation.metrics import (
    case_metrics, evaluate_case, hd95, slice_scores, stroke2021_block, summarise, summarise_cases,
    to_json_safe, write_summary,
)
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC, NON_STROKE

SPACING = (0.5, 0.8)  # anisotropic, so that a swap of rows and columns shows


def label_map(shape: tuple[int, int] = (8, 8), **regions: tuple[slice, slice]) -> np.ndarray:
    """A label map of zeros with IS / HS rectangles, e.g. label_map(IS=np.s_[2:5, 2:5])."""
    labels = np.zeros(shape, dtype=np.int64)
    for name, region in regions.items():
        labels[region] = {"IS": ISCHEMIC, "HS": HEMORRHAGIC}[name]
    return labels


# --- hand-computed Stroke2021 scores ----------------------------------------------------------

def test_partial_prediction_of_a_square():
    reference = label_map(IS=np.s_[1:6, 1:6])  # 25 pixels; eroded: the inner 3x3
    prediction = label_map(IS=np.s_[1:6, 1:4])  # its left 15 pixels
    scores = slice_scores(prediction, reference)
    assert scores["DSC"][ISCHEMIC] == pytest.approx(2 * 15 / 40)
    assert scores["IoU"][ISCHEMIC] == pytest.approx(15 / 25)
    # erode(G) or P adds the inner square's right column (3 pixels) to P.
    assert scores["mIoU"][ISCHEMIC] == pytest.approx(15 / 18)
    assert math.isnan(scores["DSC"][HEMORRHAGIC]) and math.isnan(scores["mIoU"][HEMORRHAGIC])


def test_thin_lesion_that_erodes_away_with_nothing_predicted_scores_zero():
    reference = label_map(IS=np.s_[3:4, 1:7])  # one pixel wide
    scores = slice_scores(np.zeros_like(reference), reference)
    assert [scores[metric][ISCHEMIC] for metric in ("DSC", "IoU", "mIoU")] == [0.0, 0.0, 0.0]


def test_one_pixel_spill_beyond_the_reference_is_tolerated_by_miou_only():
    reference = label_map(IS=np.s_[2:5, 2:5])
    prediction = reference.copy()
    prediction[2, 5] = ISCHEMIC  # inside dilate(G)
    scores = slice_scores(prediction, reference)
    assert scores["mIoU"][ISCHEMIC] == 1.0
    assert scores["DSC"][ISCHEMIC] == pytest.approx(18 / 19)
    assert scores["IoU"][ISCHEMIC] == pytest.approx(9 / 10)


def test_erosion_pads_with_zeros_at_the_image_border():
    reference = label_map(IS=np.s_[0:3, 0:3])  # in the corner: eroded, only (1, 1) is left
    prediction = np.zeros_like(reference)
    prediction[1, 1] = ISCHEMIC
    # With the border counted as lesion, erode(G) would keep 4 pixels and mIoU would be 1/4.
    assert slice_scores(prediction, reference)["mIoU"][ISCHEMIC] == 1.0


def test_wrong_class_prediction():
    reference = label_map(IS=np.s_[2:5, 2:5])
    prediction = label_map(HS=np.s_[2:5, 2:5])
    scores = slice_scores(prediction, reference)
    assert [scores[metric][ISCHEMIC] for metric in ("DSC", "IoU", "mIoU")] == [0.0, 0.0, 0.0]
    assert all(math.isnan(scores[metric][HEMORRHAGIC]) for metric in ("DSC", "IoU", "mIoU"))
    # Background agrees everywhere; erode(NS) lies inside P, so mIoU is 1 as well.
    assert [scores[metric][NON_STROKE] for metric in ("DSC", "IoU", "mIoU")] == [1.0, 1.0, 1.0]


# --- the stroke2021 block ----------------------------------------------------------------------

def test_block_skips_slices_without_the_class_and_counts_the_others():
    with_is = slice_scores(label_map(IS=np.s_[1:6, 1:4]), label_map(IS=np.s_[1:6, 1:6]))
    with_hs = slice_scores(label_map(HS=np.s_[2:5, 2:5]), label_map(HS=np.s_[2:5, 2:5]))
    wrong_class = slice_scores(label_map(HS=np.s_[2:5, 2:5]), label_map(IS=np.s_[2:5, 2:5]))
    empty = slice_scores(label_map(HS=np.s_[0:2, 0:2]), label_map())  # a false positive: invisible here
    block = stroke2021_block([with_is, empty, with_hs, wrong_class, empty])
    assert block["n_slices"] == {"NS": 5, "IS": 2, "HS": 1}
    assert block["DSC"]["IS"] == pytest.approx((0.75 + 0.0) / 2)
    assert block["DSC"]["HS"] == 1.0
    assert block["DSC"]["Mean"] == pytest.approx((0.375 + 1.0) / 2)
    assert block["mIoU"]["IS"] == pytest.approx((15 / 18 + 0.0) / 2)


def test_block_mean_ignores_an_absent_class():
    with_is = slice_scores(label_map(IS=np.s_[1:6, 1:4]), label_map(IS=np.s_[1:6, 1:6]))
    block = stroke2021_block([with_is])
    assert math.isnan(block["IoU"]["HS"]) and block["n_slices"]["HS"] == 0
    assert block["IoU"]["Mean"] == block["IoU"]["IS"] == pytest.approx(0.6)
    nothing = stroke2021_block([slice_scores(label_map(), label_map())])
    assert math.isnan(nothing["DSC"]["Mean"]) and nothing["DSC"]["NS"] == 1.0


# --- agreement with MONAI ----------------------------------------------------------------------

def random_batch(rng: np.random.Generator, n_slices: int = 8, shape: tuple[int, int] = (48, 40)):
    """Blobby reference slices, predictions that are shifted and noisy, and two lesion-free slices."""
    references, predictions = [], []
    for _ in range(n_slices):
        field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=4)
        reference = np.digitize(field, np.quantile(field, [0.7, 0.9]))
        prediction = np.roll(reference, shift=tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        flips = rng.random(shape) < 0.02
        prediction[flips] = rng.integers(0, 3, size=np.count_nonzero(flips))
        references.append(reference)
        predictions.append(prediction)
    references += [np.zeros(shape, dtype=np.int64)] * 2
    predictions += [np.zeros(shape, dtype=np.int64), label_map(shape, HS=np.s_[5:9, 5:9])]
    return predictions, references


def one_hot(label_maps: list[np.ndarray]) -> torch.Tensor:
    """(batch, class, row, col) one-hot tensor of label maps."""
    return torch.from_numpy(np.eye(3, dtype=np.float32)[np.stack(label_maps)]).permute(0, 3, 1, 2)


def test_dsc_and_iou_agree_with_monai():
    predictions, references = random_batch(np.random.default_rng(0))
    ours = [slice_scores(prediction, reference) for prediction, reference in zip(predictions, references)]
    # ignore_empty=True: MONAI gives NaN wherever the reference lacks the class, whatever is
    # predicted; exactly the slices the Stroke2021 protocol skips.
    monai_scores = {
        "DSC": DiceMetric(include_background=True, reduction="none", ignore_empty=True),
        "IoU": MeanIoU(include_background=True, reduction="none", ignore_empty=True),
    }
    for metric, monai_metric in monai_scores.items():
        expected = monai_metric(one_hot(predictions), one_hot(references)).numpy()
        np.testing.assert_allclose(np.stack([scores[metric] for scores in ours]), expected, rtol=1e-5)
    assert np.isnan(expected[-2:, 1:]).all()  # the lesion-free slices, with and without a false positive


def test_case_dice_follows_nnunet_where_monai_ignores_empty_references():
    predictions, references = random_batch(np.random.default_rng(1))
    monai_dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(
        one_hot(predictions), one_hot(references)).numpy()
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        for label, metrics in case_metrics(prediction, reference, SPACING).items():
            label = int(label)
            if metrics["n_ref"] > 0:
                assert metrics["Dice"] == pytest.approx(monai_dice[index, label], rel=1e-5)
            elif metrics["n_pred"] > 0:  # MONAI: NaN; nnU-Net: a false positive scores 0
                assert metrics["Dice"] == 0.0 and np.isnan(monai_dice[index, label])
            else:  # both empty: NaN in both (MONAI with ignore_empty=False would give 1)
                assert math.isnan(metrics["Dice"]) and math.isnan(metrics["IoU"])


def test_case_counts():
    reference = label_map(IS=np.s_[1:6, 1:6])
    prediction = label_map(IS=np.s_[1:6, 1:4], HS=np.s_[6:8, 6:8])
    metrics = case_metrics(prediction, reference, SPACING)
    assert {key: metrics["1"][key] for key in ("TP", "FP", "FN", "TN", "n_pred", "n_ref")} == {
        "TP": 15, "FP": 0, "FN": 10, "TN": 39, "n_pred": 15, "n_ref": 25}
    assert metrics["1"]["Dice"] == pytest.approx(0.75) and metrics["1"]["IoU"] == pytest.approx(0.6)
    assert metrics["2"]["Dice"] == 0.0 and math.isnan(metrics["2"]["HD95"])


# --- HD95 --------------------------------------------------------------------------------------

def brute_force_hd95(prediction_mask: np.ndarray, reference_mask: np.ndarray, spacing) -> float:
    """All boundary pairs; a boundary pixel has a 4-neighbour outside the mask or the image."""
    def boundary_points(mask):
        padded = np.pad(mask, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    distances = np.linalg.norm(boundary_points(prediction_mask)[:, None] - boundary_points(reference_mask)[None], axis=2)
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # raised inside MONAI
def test_hd95_matches_brute_force_and_monai():
    reference = label_map((20, 24), IS=np.s_[3:12, 4:15])
    prediction = label_map((20, 24), IS=np.s_[0:8, 8:20])  # touches the image border
    prediction[15:18, 2:5] = ISCHEMIC  # a distant false-positive island
    prediction_mask, reference_mask = prediction == ISCHEMIC, reference == ISCHEMIC
    ours = hd95(prediction_mask, reference_mask, SPACING)
    assert ours == pytest.approx(brute_force_hd95(prediction_mask, reference_mask, SPACING))
    as_batch = [torch.from_numpy(mask[None, None]) for mask in (prediction_mask, reference_mask)]
    monai = compute_hausdorff_distance(*as_batch, include_background=True, percentile=95, spacing=SPACING)
    assert ours == pytest.approx(float(monai[0, 0]), rel=1e-5)
    assert ours > 0


def test_hd95_is_nan_when_either_side_is_empty_and_rejects_bad_spacing():
    mask = label_map(IS=np.s_[2:5, 2:5]) == ISCHEMIC
    assert math.isnan(hd95(mask, np.zeros_like(mask), SPACING))
    assert math.isnan(hd95(np.zeros_like(mask), mask, SPACING))
    assert hd95(mask, mask, SPACING) == 0.0
    with pytest.raises(ValueError, match="spacing"):
        hd95(mask, mask, (0.5, 0.0))


# --- summary -----------------------------------------------------------------------------------

def fp_rate_cases() -> dict:
    """IS absent from 3 references and predicted on 1 of those; HS absent from all 4, predicted on 2."""
    is_lesion, hs_spot = {"IS": np.s_[2:5, 2:5]}, {"HS": np.s_[6:8, 6:8]}
    pairs = [
        (label_map(**is_lesion), label_map(**is_lesion)),
        (label_map(**is_lesion, **hs_spot), label_map()),
        (label_map(**hs_spot), label_map()),
        (label_map(), label_map()),
    ]
    return {f"case_{index}": (prediction, reference, SPACING) for index, (prediction, reference) in enumerate(pairs)}


def test_summary_layout_and_false_positive_slice_rate():
    summary = summarise_cases(fp_rate_cases())
    assert list(summary) == ["stroke2021", "metric_per_case", "mean", "foreground_mean", "hd95",
                             "false_positive_slice_rate", "empty_reference_handling"]
    assert summary["false_positive_slice_rate"] == pytest.approx({"IS": 1 / 3, "HS": 2 / 4})
    assert summary["stroke2021"]["n_slices"] == {"NS": 4, "IS": 1, "HS": 0}
    assert [entry["case"] for entry in summary["metric_per_case"]] == [f"case_{index}" for index in range(4)]
    # IS Dice over cases: 1 (hit), 0 (false positive), NaN, NaN (both empty, ignored).
    assert summary["mean"]["1"]["Dice"] == pytest.approx(0.5)
    assert summary["mean"]["2"]["Dice"] == 0.0  # two false positives; the two both-empty cases ignored
    assert summary["foreground_mean"]["Dice"] == pytest.approx(0.25)
    assert summary["hd95"]["IS"] == 0.0 and math.isnan(summary["hd95"]["HS"])


def test_summarise_accepts_results_evaluated_elsewhere():
    cases = fp_rate_cases()
    results = [evaluate_case(name, *case) for name, case in cases.items()]
    assert to_json_safe(summarise(results)) == to_json_safe(summarise_cases(cases))
    with pytest.raises(ValueError, match="no cases"):
        summarise([])


def test_written_summary_has_null_instead_of_nan(tmp_path):
    path = tmp_path / "summary.json"
    write_summary(path, summarise_cases(fp_rate_cases()))
    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    written = json.loads(path.read_text(), parse_constant=refuse)
    assert written["stroke2021"]["DSC"]["HS"] is None
    assert written["stroke2021"]["DSC"]["Mean"] == written["stroke2021"]["DSC"]["IS"] == 1.0
    assert written["hd95"]["HS"] is None
    assert written["metric_per_case"][3]["metrics"]["1"]["Dice"] is None
    assert to_json_safe({"a": (np.float32("nan"), np.int64(3))}) == {"a": [None, 3]}


# --- input checks ------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction, reference, message", [
    (np.zeros((4, 4), np.int64), np.zeros((4, 5), np.int64), "differs from reference shape"),
    (np.full((4, 4), 3), np.zeros((4, 4), np.int64), r"0\.\.2, found \[3\]"),
    (np.zeros((4, 4), np.int64), np.full((4, 4), -1), r"found \[-1\]"),
    (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int64), "integer labels"),
    (np.zeros((1, 4, 4), np.int64), np.zeros((1, 4, 4), np.int64), "2D label map"),
])
def test_invalid_label_maps_are_refused(prediction, reference, message):
    with pytest.raises(ValueError, match=message):
        slice_scores(prediction, reference)
    with pytest.raises(ValueError, match=message):
        case_metrics(prediction, reference, SPACING)
