"""Table 3 (models compared) and Table 4 (SDMC-Seg ablation) from the folds' validation summaries.

Every measured cell is the mean ± sample standard deviation (n - 1) over the evaluated
cross-validation folds of its model; with one fold there is no spread and the mean stands alone.
"Mean" is recomputed in each fold as the average of the IS and HS scores (NS excluded, as
published), then averaged over folds like the other columns; so is HD95's (mm, each fold's mean
over the cases where it is defined, as nnU-Net). Published figures sit in their own columns:
the paper's single split and the authors' 5-fold cross-validation, both over slices.
"""

import math
from typing import Callable

import numpy as np

from sdmcunet.evaluation.metrics import SLICE_METRICS, nanmean
from sdmcunet.labels import CLASS_ABBREVIATIONS, HEMORRHAGIC, ISCHEMIC, NON_STROKE
from sdmcunet.reporting.collect import Results
from sdmcunet.results.trained_model import TrainedModel
from sdmcunet.reporting.document import Table
from sdmcunet.reporting.published import FIVE_FOLD, PUBLISHED_MARK, TABLE3, TABLE4, PublishedResult
from sdmcunet.training.trainers import TRAINERS

NS, IS, HS = (CLASS_ABBREVIATIONS[label] for label in (NON_STROKE, ISCHEMIC, HEMORRHAGIC))
NOT_TRAINED = "not trained"
MISSING = "–"
PUBLISHED_HEADER = f"Mean DSC ({PUBLISHED_MARK})"
PUBLISHED_SINGLE_SPLIT_HEADER = f"Mean DSC, slice-level single split ({PUBLISHED_MARK})"
PUBLISHED_FIVE_FOLD_HEADERS = (f"Mean DSC, slice-level 5-fold ({PUBLISHED_MARK})",
                               f"Mean HD95, slice-level 5-fold ({PUBLISHED_MARK})")

SummaryValue = Callable[[dict], float]  # reads one number from a fold's summary.json


def _number(value) -> float:
    """A summary value as a float: JSON null (NaN written as null) and absent values are NaN."""
    return math.nan if value is None else float(value)


def class_score(metric: str, class_name: str) -> SummaryValue:
    # a mask autoencoder fold without lesion slices to reconstruct has no stroke2021 block
    return lambda summary: _number(summary.get("stroke2021", {}).get(metric, {}).get(class_name))


def hd95_score(class_name: str) -> SummaryValue:
    """The fold's mean HD95 of a class over the cases where it is defined (nnU-Net's `hd95`)."""
    return lambda summary: _number(summary.get("hd95", {}).get(class_name))


def lesion_mean(metric: str) -> SummaryValue:
    """The protocol's Mean, from the fold's IS and HS scores (NS never enters it); for HD95 likewise."""
    score = hd95_score if metric == "HD95" else lambda name: class_score(metric, name)
    return lambda summary: nanmean([score(name)(summary) for name in (IS, HS)])


def false_positive_rate(class_name: str) -> SummaryValue:
    return lambda summary: _number(summary.get("false_positive_slice_rate", {}).get(class_name))


def mean_std(values: list[float]) -> str:
    """'0.712 ± 0.013' over the finite values; '(k of n folds)' when some fold had none."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return MISSING
    text = f"{np.mean(finite):.3f}" + (f" ± {np.std(finite, ddof=1):.3f}" if len(finite) > 1 else "")
    return text if len(finite) == len(values) else f"{text} ({len(finite)} of {len(values)} folds)"


def model_cell(model: TrainedModel | None, value: SummaryValue) -> str:
    """mean ± std of one summary value over a model's evaluated folds ('–' if not trained: `folds_cell` says so)."""
    if model is None:
        return MISSING
    return mean_std([value(fold.summary) for fold in model.evaluated_folds()])


def folds_cell(model: TrainedModel | None) -> str:
    if model is None:
        return NOT_TRAINED
    names = [fold.name for fold in model.evaluated_folds()]
    return f"{len(names)} ({', '.join(names)})" if names else "0 (none evaluated)"


def published_cell(trainer: str, published_table: tuple[PublishedResult, ...]) -> str:
    value = next((result.mean_dice for result in published_table if result.trainer == trainer), None)
    return MISSING if value is None else f"{value:.3f}"


def published_five_fold_cells(trainer: str) -> list[str]:
    """The authors' 5-fold mean DSC ± std and mean HD95 of a model, or '–' where they published none."""
    result = next((result for result in FIVE_FOLD if result.trainer == trainer), None)
    if result is None:
        return [MISSING] * len(PUBLISHED_FIVE_FOLD_HEADERS)
    return [f"{result.mean_dice:.3f} ± {result.mean_dice_std:.3f}", f"{result.mean_hd95:.2f}"]


TABLE3_COLUMNS: list[tuple[str, SummaryValue]] = [
    *[(f"{metric} {name}", class_score(metric, name) if name != "Mean" else lesion_mean(metric))
      for metric in SLICE_METRICS for name in (NS, IS, HS, "Mean")],
    *[(f"HD95 {name}", hd95_score(name) if name != "Mean" else lesion_mean("HD95")) for name in (IS, HS, "Mean")],
    *[(f"FP slice rate {name}", false_positive_rate(name)) for name in (IS, HS)],
]


def display_name(trainer: str) -> str:
    """The trainer with the model's published name, e.g. 'UNetTrainer (U-Net)'."""
    paper_name = next((result.name for result in (*TABLE3, *FIVE_FOLD) if result.trainer == trainer), None)
    return f"{trainer} ({paper_name})" if paper_name else trainer


def table3(results: Results) -> Table:
    """Every trained segmentation model, and the published models that are not trained yet."""
    models = {model.trainer: model for model in results.segmentation_models}
    published = dict.fromkeys(result.trainer for result in (*TABLE3, *FIVE_FOLD))
    trainers = [*models, *(trainer for trainer in published if trainer not in models)]
    header = ["model", "folds", *(title for title, _ in TABLE3_COLUMNS), PUBLISHED_SINGLE_SPLIT_HEADER,
              *PUBLISHED_FIVE_FOLD_HEADERS]
    rows = [[display_name(trainer), folds_cell(models.get(trainer)),
             *(model_cell(models.get(trainer), value) for _, value in TABLE3_COLUMNS), published_cell(trainer, TABLE3),
             *published_five_fold_cells(trainer)]
            for trainer in trainers]
    first_published = len(header) - 1 - len(PUBLISHED_FIVE_FOLD_HEADERS)
    return Table(header, rows, published_columns=frozenset(range(first_published, len(header))))


def table4(results: Results) -> Table:
    """The three SDMC-Seg variants of the published ablation, measured beside published."""
    header = ["mask encoder", "image encoder", "model", "folds", "Mean DSC (IS, HS)", PUBLISHED_HEADER]
    rows = []
    for published in TABLE4:
        variant = TRAINERS.get(published.trainer)
        model = results.models.get(published.trainer)
        rows.append(["fine-tuned" if variant.fine_tuned_mask_autoencoder else "pretrained",
                     "trainable" if variant.image_encoder_trainable else "frozen (1x1 projection trained)",
                     published.trainer, folds_cell(model), model_cell(model, lesion_mean("DSC")),
                     published_cell(published.trainer, TABLE4)])
    return Table(header, rows, published_columns=frozenset({len(header) - 1}))


def crossval_table(results: Results) -> Table | None:
    """Pooled cross-validation summaries (all folds' slices scored together), where they exist."""
    columns = [(f"DSC {name}", class_score("DSC", name)) for name in (NS, IS, HS)] + [("DSC Mean", lesion_mean("DSC"))]
    rows = [[model.trainer, folds, *(mean_std([value(summary)]) for _, value in columns)]
            for model in results.segmentation_models for folds, summary in model.crossval_summaries().items()]
    if not rows:
        return None
    return Table(["model", "folds pooled", *(title for title, _ in columns)], rows)
