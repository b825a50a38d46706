"""Segmentation metrics: the exact Stroke2021 slice protocol and nnU-Net-style per-case metrics.

Stroke2021 protocol, per slice and per class c in {NS=0, IS=1, HS=2}, on the binary maps
P = (prediction == c) and G = (reference == c):

- DSC = 2|P and G| / (|P| + |G|) and IoU = |P and G| / |P or G|;
- mIoU, the boundary-tolerant IoU of the TEKNOFEST scoring: with a 3x3 all-ones element and zero
  padding, mIoU = |P and dilate(G)| / |erode(G) or P|, and 0 when that denominator is 0;
- a slice whose reference lacks c gives NaN for c and is skipped, so a class score is the mean
  over the slices that contain the class; "Mean" averages IS and HS (NS excluded).

That protocol never sees a lesion predicted on a slice without one, so the summary also reports
the false-positive slice rate, and nnU-Net's per-case counts, Dice, IoU and HD95 (a Stroke2021
case is a single 2D slice). Each `metric_per_case` entry also keeps the slice's protocol scores
(`stroke2021`: DSC, IoU, mIoU per class, null where the reference lacks the class), so that
statistics over patients (evaluation/statistics.py) can regroup the slices without the label maps.
"""

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from sdmcunet.labels import CLASS_ABBREVIATIONS, HEMORRHAGIC, ISCHEMIC
from sdmcunet.utils.files import atomic_write_json

NUM_CLASSES = len(CLASS_ABBREVIATIONS)
FOREGROUND_LABELS = (ISCHEMIC, HEMORRHAGIC)
SLICE_METRICS = ("DSC", "IoU", "mIoU")
HD_PERCENTILE = 95.0
# The mIoU element, 3x3 all-ones, applied to each class plane of a (class, row, col) stack at once.
MIOU_ELEMENT = np.ones((1, 3, 3), dtype=bool)
EMPTY_REFERENCE_HANDLING = (
    "Stroke2021 block: slices without class c in the reference are skipped for c (n_slices counts "
    "the others); per-case Dice/IoU: NaN when reference and prediction are both empty, 0 when only "
    "the reference is, and NaNs are ignored by the means; HD95: NaN when either side is empty; "
    "false_positive_slice_rate: among slices without class c in the reference, the fraction "
    "predicted to contain c."
)


@dataclass(frozen=True)
class CaseResult:
    """Everything `summarise` needs from one case (picklable, so cases can be evaluated in workers)."""

    name: str
    slice_scores: dict[str, np.ndarray]  # "DSC"/"IoU"/"mIoU" -> score per class, NaN where absent
    metrics: dict[str, dict[str, float]]  # str(label) -> nnU-Net-style metrics of that class


def check_label_maps(prediction: np.ndarray, reference: np.ndarray, num_classes: int = NUM_CLASSES) -> None:
    """Raise ValueError unless both are 2D integer label maps of one shape with labels 0..num_classes-1."""
    for role, labels in (("prediction", prediction), ("reference", reference)):
        if labels.ndim != 2:
            raise ValueError(f"{role}: expected a 2D label map, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{role}: expected integer labels, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            unexpected = sorted(set(np.unique(labels).tolist()) - set(range(num_classes)))
            raise ValueError(f"{role}: labels must lie in 0..{num_classes - 1}, found {unexpected}")
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")


def nanmean(values: Any, axis: int | None = None) -> float | np.ndarray:
    """Mean ignoring NaN; NaN where nothing is left, without numpy's 'mean of empty slice' warning."""
    values = np.asarray(values, dtype=float)
    defined = ~np.isnan(values)
    counts = defined.sum(axis=axis)
    totals = np.where(defined, values, 0.0).sum(axis=axis)
    means = np.divide(totals, counts, out=np.full(np.shape(counts), np.nan), where=counts > 0)
    return float(means) if axis is None else means


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros(np.shape(numerator)), where=denominator > 0)


def _pixel_counts(masks: np.ndarray) -> np.ndarray:
    """Foreground pixels of each plane of a (class, row, col) stack."""
    return np.count_nonzero(masks, axis=(1, 2))


def slice_scores(prediction: np.ndarray, reference: np.ndarray, num_classes: int = NUM_CLASSES) -> dict[str, np.ndarray]:
    """DSC, IoU and mIoU of one slice for every class, each as an array indexed by class.

    Classes absent from the reference get NaN: the protocol skips them for this slice.
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    check_label_maps(prediction, reference, num_classes)
    classes = np.arange(num_classes)[:, None, None]
    predicted = prediction[None] == classes
    expected = reference[None] == classes
    # Plain dilation already pads with zeros; erosion needs border_value=0 so that a lesion
    # touching the image border is eroded there too.
    tolerant_reference = ndimage.binary_dilation(expected, structure=MIOU_ELEMENT)
    core_reference = ndimage.binary_erosion(expected, structure=MIOU_ELEMENT, border_value=0)

    n_predicted, n_expected = _pixel_counts(predicted), _pixel_counts(expected)
    overlap = _pixel_counts(predicted & expected)
    scores = {
        "DSC": _ratio(2 * overlap, n_predicted + n_expected),
        "IoU": _ratio(overlap, _pixel_counts(predicted | expected)),
        # 0 when nothing is predicted and the lesion is too thin to survive erosion.
        "mIoU": _ratio(_pixel_counts(predicted & tolerant_reference), _pixel_counts(predicted | core_reference)),
    }
    present = n_expected > 0
    return {metric: np.where(present, values, np.nan) for metric, values in scores.items()}


def _stack(per_slice_scores: Sequence[Mapping[str, np.ndarray]], metric: str) -> np.ndarray:
    """One metric of every slice as a (slice, class) array."""
    return np.array([scores[metric] for scores in per_slice_scores], dtype=float).reshape(-1, NUM_CLASSES)


def stroke2021_block(per_slice_scores: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict[str, float | int]]:
    """The `stroke2021` block of summary.json from the `slice_scores` of every slice.

    Class score: mean over the slices containing the class (NaN if none does); "Mean": mean of
    the IS and HS scores, ignoring a NaN one.
    """
    block: dict[str, dict[str, float | int]] = {}
    for metric in SLICE_METRICS:
        class_means = nanmean(_stack(per_slice_scores, metric), axis=0)
        block[metric] = {CLASS_ABBREVIATIONS[label]: float(class_means[label]) for label in range(NUM_CLASSES)}
        block[metric]["Mean"] = nanmean(class_means[list(FOREGROUND_LABELS)])
    # DSC is defined exactly on the slices whose reference contains the class.
    slices_with_class = np.count_nonzero(~np.isnan(_stack(per_slice_scores, "DSC")), axis=0)
    block["n_slices"] = {CLASS_ABBREVIATIONS[label]: int(slices_with_class[label]) for label in range(NUM_CLASSES)}
    return block


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (or outside the image), as in MONAI."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float]:
    if len(spacing) != 2 or not all(value > 0 for value in spacing):
        raise ValueError(f"spacing must be two positive pixel sizes (row, col) in mm, got {spacing}")
    return float(spacing[0]), float(spacing[1])


def hd95(prediction_mask: np.ndarray, reference_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two 2D binary masks.

    The larger of the two directed 95th percentiles of boundary-to-boundary distances (MONAI's
    `compute_hausdorff_distance(percentile=95)`); NaN when either mask is empty.
    """
    spacing = _check_spacing(spacing)
    if not prediction_mask.any() or not reference_mask.any():
        return math.nan
    # Both boundaries lie in the joint bounding box, so distances computed inside it are exact.
    box = ndimage.find_objects((prediction_mask | reference_mask).astype(np.uint8))[0]
    prediction_edge, reference_edge = _boundary(prediction_mask)[box], _boundary(reference_mask)[box]
    to_reference = ndimage.distance_transform_edt(~reference_edge, sampling=spacing)[prediction_edge]
    to_prediction = ndimage.distance_transform_edt(~prediction_edge, sampling=spacing)[reference_edge]
    return float(max(np.percentile(to_reference, HD_PERCENTILE), np.percentile(to_prediction, HD_PERCENTILE)))


def case_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    labels: Sequence[int] = FOREGROUND_LABELS,
) -> dict[str, dict[str, float]]:
    """nnU-Net's per-case metrics plus HD95 for each label, keyed by str(label).

    Dice and IoU are NaN when reference and prediction are both empty (nnU-Net's convention).
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    check_label_maps(prediction, reference)
    metrics = {}
    for label in labels:
        predicted, expected = prediction == label, reference == label
        true_positives = int(np.count_nonzero(predicted & expected))
        false_positives = int(np.count_nonzero(predicted)) - true_positives
        false_negatives = int(np.count_nonzero(expected)) - true_positives
        errors_and_hits = true_positives + false_positives + false_negatives
        metrics[str(label)] = {
            "TP": true_positives,
            "FP": false_positives,
            "FN": false_negatives,
            "TN": prediction.size - errors_and_hits,
            "n_pred": true_positives + false_positives,
            "n_ref": true_positives + false_negatives,
            "Dice": 2 * true_positives / (errors_and_hits + true_positives) if errors_and_hits else math.nan,
            "IoU": true_positives / errors_and_hits if errors_and_hits else math.nan,
            "HD95": hd95(predicted, expected, spacing),
        }
    return metrics


def evaluate_case(name: str, prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> CaseResult:
    """Stroke2021 slice scores and nnU-Net-style metrics of one case (one 2D slice)."""
    return CaseResult(name, slice_scores(prediction, reference), case_metrics(prediction, reference, spacing))


def false_positive_slice_rate(results: Sequence[CaseResult]) -> dict[str, float]:
    """Per foreground class: among slices whose reference lacks it, the fraction predicted to contain it."""
    rates = {}
    for label in FOREGROUND_LABELS:
        class_metrics = [result.metrics[str(label)] for result in results]
        predicted_without_reference = [metrics["n_pred"] > 0 for metrics in class_metrics if metrics["n_ref"] == 0]
        rates[CLASS_ABBREVIATIONS[label]] = nanmean(predicted_without_reference)  # NaN if every slice has it
    return rates


def named_slice_scores(scores: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """A slice's `slice_scores` keyed by class abbreviation, as `metric_per_case` stores them."""
    return {metric: {CLASS_ABBREVIATIONS[label]: float(values[label]) for label in range(NUM_CLASSES)}
            for metric, values in scores.items()}


def summarise(results: Iterable[CaseResult]) -> dict[str, Any]:
    """The summary.json content (with NaN; see `to_json_safe`) of evaluated cases."""
    results = list(results)
    if not results:
        raise ValueError("no cases to summarise")
    labels = [str(label) for label in FOREGROUND_LABELS]
    metric_names = list(results[0].metrics[labels[0]])
    mean = {
        label: {metric: nanmean([result.metrics[label][metric] for result in results]) for metric in metric_names}
        for label in labels
    }
    # As nnU-Net: a plain mean over classes, NaN if a class has no defined value in any case.
    foreground_mean = {metric: float(np.mean([mean[label][metric] for label in labels])) for metric in metric_names}
    return {
        "stroke2021": stroke2021_block([result.slice_scores for result in results]),
        "metric_per_case": [{"case": result.name, "metrics": result.metrics,
                             "stroke2021": named_slice_scores(result.slice_scores)} for result in results],
        "mean": mean,
        "foreground_mean": foreground_mean,
        "hd95": {CLASS_ABBREVIATIONS[int(label)]: mean[label]["HD95"] for label in labels},
        "false_positive_slice_rate": false_positive_slice_rate(results),
        "empty_reference_handling": EMPTY_REFERENCE_HANDLING,
    }


def summarise_cases(cases: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[float]]]) -> dict[str, Any]:
    """`summarise` of cases given as name -> (prediction, reference, spacing)."""
    return summarise(evaluate_case(name, *case) for name, case in cases.items())


def to_json_safe(content: Any) -> Any:
    """A copy made of plain Python types, with NaN (and infinities) as None: JSON has neither."""
    if isinstance(content, Mapping):
        return {str(key): to_json_safe(value) for key, value in content.items()}
    if isinstance(content, (list, tuple, np.ndarray)):
        return [to_json_safe(value) for value in content]
    if isinstance(content, np.generic):
        content = content.item()
    if isinstance(content, float) and not math.isfinite(content):
        return None
    return content


def write_summary(path: str | os.PathLike, summary: Mapping[str, Any]) -> None:
    """Write a summary as valid JSON (NaN -> null), atomically."""
    atomic_write_json(path, to_json_safe(summary))
