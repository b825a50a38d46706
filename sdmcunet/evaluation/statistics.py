"""Statistics over patients: bootstrap intervals of the Stroke2021 scores and paired tests of two models.

Cases are 2D slices, and the slices of one patient are not independent (a lesion spans several of
them, and one faint lesion missed costs a class mean several points), so every statistic here
resamples or pairs whole patients, never slices. A patient is the raw dataset's `case_info.json`
PatientID, else StudyInstanceUID, else the case itself, as the cross-validation splits group them
(`experiment_planning.splits.patient_of_each_case`); without `case_info.json` the patients are
unknown and the statistics say so instead of treating slices as patients.

Bootstrap (`BOOTSTRAP_DRAWS` draws, seed `BOOTSTRAP_SEED`): the patients, in sorted order, are
drawn with replacement as `numpy.random.default_rng(seed).integers(n, size=(draws, n))`, one row
per draw. Each draw is scored as the whole set is: a class, the mean over the drawn slices whose
reference holds it (a patient drawn twice counts twice); Mean, of IS and HS, a class absent from
the draw left out; HD95, the mean over the drawn cases where it is defined. The interval is the
2.5th and 97.5th percentiles (numpy's linear interpolation) of the draws whose score is defined.

Paired test: per patient, the mean of the IS and HS slice DSCs of the slices both models predicted
(one score per lesion class a slice's reference holds, as the protocol scores slices); a two-sided
Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, its defaults) over the patients with such a mean,
Holm-corrected over the comparisons made.
"""

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sdmcunet import paths
from sdmcunet.evaluation.metrics import FOREGROUND_LABELS, SLICE_METRICS, nanmean
from sdmcunet.experiment_planning.splits import patient_of_each_case
from sdmcunet.labels import CLASS_ABBREVIATIONS
from sdmcunet.raw_dataset import DATASET_FILE
from sdmcunet.results.layout import REFERENCES_FOLDER
from sdmcunet.utils.errors import SDMCError

CASE_INFO_FILE = "case_info.json"  # beside a raw dataset's dataset.json (sdmc_convert_stroke2021 writes it)
RAW_REFERENCE_FOLDERS = ("labelsTr", "labelsTs")
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
PERCENTILES = (2.5, 97.5)
ALPHA = 0.05  # significance level of the Holm-corrected paired tests
LESION_CLASSES = tuple(CLASS_ABBREVIATIONS[label] for label in FOREGROUND_LABELS)  # ("IS", "HS")
SUMMARY_CLASSES = (*LESION_CLASSES, "Mean")
SCORES = (*SLICE_METRICS, "HD95")
BOOTSTRAP_PROCEDURE = (
    "patients (sorted) resampled with replacement as numpy.random.default_rng(seed).integers(n_patients, "
    "size=(draws, n_patients)); each draw scored as the whole set: a class, the mean over the drawn slices whose "
    "reference holds it (a patient drawn twice counts twice); Mean, of IS and HS (a class absent from the draw "
    "left out); HD95, the mean over the drawn cases where it is defined; interval: the 2.5th and 97.5th "
    "percentiles of the draws whose score is defined (null where none is: the class is in no slice)"
)


# --- per-case scores ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaseTable:
    """The lesion-class scores of evaluated slices: what the patient statistics regroup."""

    cases: tuple[str, ...]
    scores: dict[str, np.ndarray]  # DSC/IoU/mIoU/HD95 -> (case, IS/HS) array, NaN where undefined

    def subset(self, cases: Sequence[str]) -> "CaseTable":
        """The rows of these cases, in the given order (each must be in the table)."""
        row = {case: index for index, case in enumerate(self.cases)}
        rows = [row[case] for case in cases]
        return CaseTable(tuple(cases), {score: values[rows] for score, values in self.scores.items()})


def _number(value: Any) -> float:
    """A summary value as a float: JSON null (NaN written as null) is NaN."""
    return math.nan if value is None else float(value)


def has_case_scores(metric_per_case: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a summary's `metric_per_case` holds cases with their slice scores (summaries before them do not)."""
    return bool(metric_per_case) and all("stroke2021" in entry for entry in metric_per_case)


def case_table(metric_per_case: Sequence[Mapping[str, Any]]) -> CaseTable:
    """The table of a summary's `metric_per_case` entries (as written, or as `summarise` returns them).

    DSC, IoU and mIoU are the entries' slice scores (NaN where the reference lacks the class, which
    the protocol skips); HD95 is nnU-Net's per-case value (NaN where either side is empty).
    """
    if missing := [entry.get("case") for entry in metric_per_case if "stroke2021" not in entry]:
        raise SDMCError(f"{len(missing)} cases (first: {missing[0]}) have no per-case slice scores: their summary.json "
                        f"predates them; re-run sdmc_evaluate (or the validation) to rewrite it")
    scores = {metric: np.array([[_number(entry["stroke2021"][metric][name]) for name in LESION_CLASSES]
                                for entry in metric_per_case], dtype=float).reshape(-1, len(LESION_CLASSES))
              for metric in SLICE_METRICS}
    scores["HD95"] = np.array([[_number(entry["metrics"][str(label)]["HD95"]) for label in FOREGROUND_LABELS]
                               for entry in metric_per_case], dtype=float).reshape(-1, len(LESION_CLASSES))
    return CaseTable(tuple(entry["case"] for entry in metric_per_case), scores)


def _with_mean(class_scores: np.ndarray) -> np.ndarray:
    """(row, IS/HS) scores with a third column, their Mean (a NaN class left out, as in the summary)."""
    return np.column_stack([class_scores, nanmean(class_scores, axis=1)])


def pooled_scores(table: CaseTable) -> dict[str, dict[str, float]]:
    """The scores of all the table's cases together: per class the mean where defined (NaN if nowhere), and Mean."""
    return {score: dict(zip(SUMMARY_CLASSES, map(float, _with_mean(nanmean(values, axis=0)[None])[0])))
            for score, values in table.scores.items()}


# --- patients ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatientLookup:
    """The patient of each case and the `case_info.json` it comes from, or, when they are unknown, why."""

    patient_of: dict[str, str] | None
    case_info: Path | None = None
    reason: str | None = None

    @classmethod
    def unknown(cls, reason: str) -> "PatientLookup":
        return cls(None, None, reason)


def patients_from_raw_dataset(raw_dataset: Path, cases: Sequence[str]) -> PatientLookup:
    """The patients of `cases` from the raw dataset's case_info.json; unknown (with why) without one."""
    case_info = raw_dataset / CASE_INFO_FILE
    if not case_info.is_file():
        return PatientLookup.unknown(f"{raw_dataset} has no {CASE_INFO_FILE} (sdmc_convert_stroke2021 writes it; a "
                                     f"dataset made elsewhere names no patients)")
    return PatientLookup(patient_of_each_case(raw_dataset, list(cases)), case_info)


def raw_dataset_of_references(reference_folder: Path) -> Path | str:
    """The raw dataset these references belong to, or why there is none.

    A raw dataset's labelsTr/labelsTs lie beside its dataset.json; a preprocessed dataset's
    gt_segmentations (a model's validation references) belong to the raw dataset of the same name.
    """
    folder = reference_folder.resolve()
    if folder.name in RAW_REFERENCE_FOLDERS and (folder.parent / DATASET_FILE).is_file():
        return folder.parent
    if folder.name == REFERENCES_FOLDER:
        raw = paths.raw_root() / folder.parent.name
        if (raw / DATASET_FILE).is_file():
            return raw
        return f"the references are those of {folder.parent.name}, which has no raw dataset in {paths.raw_root()}"
    return (f"the reference folder {folder} is neither a raw dataset's {' or '.join(RAW_REFERENCE_FOLDERS)} (beside "
            f"its {DATASET_FILE}) nor a preprocessed dataset's {REFERENCES_FOLDER}")


def patients_of_references(reference_folders: set[Path], cases: Sequence[str]) -> PatientLookup:
    """The patients of cases whose references lie in `reference_folders` (one raw dataset's, or unknown)."""
    if len(reference_folders) != 1:
        return PatientLookup.unknown(f"the references lie in {len(reference_folders)} folders, not one raw dataset's")
    raw_dataset = raw_dataset_of_references(next(iter(reference_folders)))
    if isinstance(raw_dataset, str):
        return PatientLookup.unknown(raw_dataset)
    return patients_from_raw_dataset(raw_dataset, cases)


def _patient_index(cases: Sequence[str], patient_of: Mapping[str, str]) -> tuple[list[str], np.ndarray]:
    """The patients in sorted order, and each case's position among them."""
    patients = sorted({patient_of[case] for case in cases})
    position = {patient: index for index, patient in enumerate(patients)}
    return patients, np.array([position[patient_of[case]] for case in cases], dtype=int)


# --- bootstrap over patients ---------------------------------------------------------------------

def resampling_counts(n_patients: int, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(draw, patient): how often each patient is drawn, from the documented draw of indices."""
    drawn = np.random.default_rng(seed).integers(n_patients, size=(draws, n_patients))
    counts = np.zeros((draws, n_patients))
    np.add.at(counts, (np.arange(draws)[:, None], drawn), 1)
    return counts


def _per_patient(values: np.ndarray, patient_index: np.ndarray, n_patients: int) -> tuple[np.ndarray, np.ndarray]:
    """Per patient and column, the sum of the defined values and how many there are."""
    defined = ~np.isnan(values)
    sums, counts = np.zeros((n_patients, values.shape[1])), np.zeros((n_patients, values.shape[1]))
    np.add.at(sums, patient_index, np.where(defined, values, 0.0))
    np.add.at(counts, patient_index, defined)
    return sums, counts


def _interval(draws: np.ndarray) -> list[float] | None:
    """The percentile interval of the defined draws; None when no draw is defined."""
    defined = draws[~np.isnan(draws)]
    return [float(bound) for bound in np.percentile(defined, PERCENTILES)] if defined.size else None


def patient_intervals(table: CaseTable, patient_of: Mapping[str, str], draws: int = BOOTSTRAP_DRAWS,
                      seed: int = BOOTSTRAP_SEED) -> dict[str, dict[str, list[float] | None]]:
    """Score -> class (IS, HS, Mean) -> 95% bootstrap interval over patients (see the module's docstring).

    Weighting each patient's sums by how often it is drawn scores a draw exactly as the draw's
    slices pooled would be, without copying slices. None where undefined (no case at all included).
    """
    if not table.cases:
        return {score: dict.fromkeys(SUMMARY_CLASSES) for score in table.scores}
    patients, patient_index = _patient_index(table.cases, patient_of)
    counts = resampling_counts(len(patients), draws, seed)
    intervals = {}
    for score, values in table.scores.items():
        sums, defined = _per_patient(values, patient_index, len(patients))
        drawn_sums, drawn_defined = counts @ sums, counts @ defined
        class_draws = np.divide(drawn_sums, drawn_defined, out=np.full(drawn_sums.shape, np.nan),
                                where=drawn_defined > 0)
        columns = _with_mean(class_draws)
        intervals[score] = {name: _interval(columns[:, column]) for column, name in enumerate(SUMMARY_CLASSES)}
    return intervals


def patient_block(metric_per_case: Sequence[Mapping[str, Any]], lookup: PatientLookup,
                  draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """summary.json's `patients` block: patients, 95% bootstrap intervals over them and HD95.

    Without patients, `n_patients`, `case_info` and `ci95` are null and `reason` says why (HD95
    needs no patients and is always given).
    """
    table = case_table(metric_per_case)
    block: dict[str, Any] = {
        "n_patients": None, "n_cases": len(table.cases), "case_info": None,
        "bootstrap": {"draws": draws, "seed": seed, "percentiles": list(PERCENTILES), "procedure": BOOTSTRAP_PROCEDURE},
        "ci95": None, "HD95": pooled_scores(table)["HD95"], "reason": lookup.reason,
    }
    if lookup.patient_of is not None:
        block |= {"n_patients": len({lookup.patient_of[case] for case in table.cases}),
                  "case_info": str(lookup.case_info), "ci95": patient_intervals(table, lookup.patient_of, draws, seed)}
    return block


# --- paired tests between models ------------------------------------------------------------------

def per_patient_mean_dice(table: CaseTable, patient_of: Mapping[str, str]) -> dict[str, float]:
    """Per patient, the mean of its slices' IS and HS DSCs (one per lesion class a slice's reference holds).

    A patient without a lesion slice has no such mean and is left out.
    """
    scores: dict[str, list[float]] = {}
    for case, dices in zip(table.cases, table.scores["DSC"]):
        scores.setdefault(patient_of[case], []).extend(dices[~np.isnan(dices)].tolist())
    return {patient: float(np.mean(values)) for patient, values in sorted(scores.items()) if values}


@dataclass(frozen=True)
class PairedComparison:
    """Two models' per-patient mean Dice on their shared slices, compared by a paired Wilcoxon test."""

    first: str
    second: str
    n_cases: int  # slices both models predicted
    n_patients: int  # patients among them with a lesion slice: the pairs tested
    median_difference: float  # of first - second over those patients; NaN without any
    statistic: float  # Wilcoxon's, NaN when not tested
    p_value: float  # two-sided, NaN when not tested
    reason: str | None = None  # why not tested
    adjusted_p: float = math.nan  # Holm-corrected over the comparisons made (`holm_correct`)

    @property
    def tested(self) -> bool:
        return self.reason is None

    @property
    def significant(self) -> bool:
        return self.tested and self.adjusted_p <= ALPHA


def paired_wilcoxon(first: str, first_table: CaseTable, second: str, second_table: CaseTable,
                    patient_of: Mapping[str, str]) -> PairedComparison:
    """Wilcoxon signed-rank test (two-sided) of `first` vs `second` over the patients of their shared slices."""
    shared = sorted(set(first_table.cases) & set(second_table.cases))
    first_means = per_patient_mean_dice(first_table.subset(shared), patient_of)
    second_means = per_patient_mean_dice(second_table.subset(shared), patient_of)
    patients = sorted(first_means.keys() & second_means.keys())
    differences = np.array([first_means[patient] - second_means[patient] for patient in patients])
    median = float(np.median(differences)) if patients else math.nan
    reason = None
    if not shared:
        reason = "no shared patients (no slice predicted by both)"
    elif not patients:
        reason = "no shared patient has a lesion slice"
    elif not np.any(differences):
        reason = "every shared patient has the same mean Dice under both models: nothing to rank"
    if reason:
        return PairedComparison(first, second, len(shared), len(patients), median, math.nan, math.nan, reason)
    from scipy import stats  # here: it takes about a second to import, and only the report tests models

    result = stats.wilcoxon([first_means[patient] for patient in patients],
                            [second_means[patient] for patient in patients])
    return PairedComparison(first, second, len(shared), len(patients), median, float(result.statistic),
                            float(result.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the given order; NaN (not tested) stays NaN and does not count.

    With m tested, the i-th smallest p (i from 1) becomes min(1, (m - i + 1) p), made non-decreasing.
    """
    values = np.asarray(p_values, dtype=float)
    tested = np.flatnonzero(~np.isnan(values))
    order = tested[np.argsort(values[tested], kind="stable")]
    adjusted, running = np.full(len(values), math.nan), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def holm_correct(comparisons: Sequence[PairedComparison]) -> list[PairedComparison]:
    """The comparisons with their Holm-adjusted p-values over the tested ones."""
    adjusted = holm([comparison.p_value for comparison in comparisons])
    return [replace(comparison, adjusted_p=value) for comparison, value in zip(comparisons, adjusted)]
