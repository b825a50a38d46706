"""The report's statistics over patients: pooled validation intervals with HD95, and SDMC-Seg's paired tests.

A model's validation is pooled over its evaluated folds (the per-case scores of every fold's
summary.json together, as one cross-validation), and the patients come from the raw dataset's
case_info.json; evaluation/statistics.py computes the intervals and tests.
"""

import math
from dataclasses import dataclass
from typing import Mapping

from sdmcunet import paths
from sdmcunet.evaluation.statistics import (
    ALPHA, BOOTSTRAP_DRAWS, BOOTSTRAP_SEED, SCORES, SUMMARY_CLASSES, CaseTable, PairedComparison, PatientLookup,
    case_table, has_case_scores, holm_correct, paired_wilcoxon, patient_intervals, patients_from_raw_dataset,
    pooled_scores,
)
from sdmcunet.reporting.collect import Results
from sdmcunet.reporting.document import Block, BulletList, Section, Table
from sdmcunet.reporting.tables import MISSING, display_name
from sdmcunet.results.trained_model import TrainedModel

TITLE = "Statistics over patients"
PROPOSED = "SDMCFinetunedTrainer"  # SDMC-Seg as published: the model every other one is tested against
# Below this many patients no two-sided Wilcoxon signed-rank test reaches ALPHA: its smallest exact p is 2 / 2**n.
FEWEST_PATIENTS_FOR_SIGNIFICANCE = 6


@dataclass(frozen=True)
class PooledValidation:
    """A model's per-case validation scores over the folds whose summaries hold them."""

    trainer: str
    folds: tuple[str, ...]  # pooled
    without_case_scores: tuple[str, ...]  # evaluated, but the summary predates per-case slice scores
    table: CaseTable


def pooled_validation(model: TrainedModel) -> PooledValidation:
    """The model's evaluated folds together; folds whose summary lacks per-case scores are named, not guessed."""
    entries, pooled, without = [], [], []
    for fold in model.evaluated_folds():
        per_case = fold.summary.get("metric_per_case", [])
        if has_case_scores(per_case):
            entries.extend(per_case)
            pooled.append(fold.name)
        else:
            without.append(fold.name)
    return PooledValidation(model.trainer, tuple(pooled), tuple(without), case_table(entries))


def patient_lookup(results: Results, cases: list[str]) -> PatientLookup:
    """The cases' patients from the dataset's raw folder, or why they are unknown."""
    if results.raw_folder is None:
        return PatientLookup.unknown(f"there is no single raw dataset Dataset{results.dataset_id:03d}_<Name> in "
                                     f"{paths.raw_root()} to name the patients")
    return patients_from_raw_dataset(results.raw_folder, cases)


# --- the pooled validation, with intervals -------------------------------------------------------

def interval_cell(value: float, interval: list[float] | None, decimals: int) -> str:
    """'0.712 [0.650, 0.770]'; '–' when the score is undefined (no slice or case has it)."""
    if math.isnan(value):
        return MISSING
    bounds = f" [{interval[0]:.{decimals}f}, {interval[1]:.{decimals}f}]" if interval else ""
    return f"{value:.{decimals}f}{bounds}"


def interval_table(pooled: list[PooledValidation], patient_of: Mapping[str, str]) -> Table:
    columns = [(score, name) for score in SCORES for name in SUMMARY_CLASSES]
    rows = []
    for validation in pooled:
        table = validation.table
        values, intervals = pooled_scores(table), patient_intervals(table, patient_of)
        patients = len({patient_of[case] for case in table.cases})
        rows.append([display_name(validation.trainer), ", ".join(validation.folds) or "none", str(patients),
                     str(len(table.cases)),
                     *(interval_cell(values[score][name], intervals[score][name], 2 if score == "HD95" else 3)
                       for score, name in columns)])
    return Table(["model", "folds pooled", "patients", "slices", *(f"{score} {name}" for score, name in columns)], rows)


# --- SDMC-Seg against each other model ------------------------------------------------------------

def _p(value: float) -> str:
    return MISSING if math.isnan(value) else f"{value:.3g}"


def _verdict(comparison: PairedComparison) -> str:
    if not comparison.tested:
        return f"not tested: {comparison.reason}"
    return f"significant at {ALPHA}" if comparison.significant else "within noise"


def comparison_table(comparisons: list[PairedComparison], pooled: Mapping[str, PooledValidation]) -> Table:
    header = ["comparison", "folds (SDMC-Seg; other)", "shared slices", "patients paired",
              "median difference (SDMC-Seg − other)", "W", "p", "Holm p", f"at {ALPHA} after Holm"]
    rows = [[f"{PROPOSED} vs {display_name(comparison.second)}",
             f"{', '.join(pooled[PROPOSED].folds)}; {', '.join(pooled[comparison.second].folds) or 'none'}",
             str(comparison.n_cases), str(comparison.n_patients),
             MISSING if math.isnan(comparison.median_difference) else f"{comparison.median_difference:+.3f}",
             MISSING if math.isnan(comparison.statistic) else f"{comparison.statistic:g}",
             _p(comparison.p_value), _p(comparison.adjusted_p), _verdict(comparison)]
            for comparison in comparisons]
    return Table(header, rows)


def _described(comparison: PairedComparison) -> str:
    return (f"{display_name(comparison.second)} (median difference {comparison.median_difference:+.3f} over "
            f"{comparison.n_patients} patients, Holm p = {_p(comparison.adjusted_p)})")


def verdict_sentences(comparisons: list[PairedComparison]) -> list[str]:
    """In words: which differences from SDMC-Seg are significant after Holm correction, which are within noise."""
    significant = [comparison for comparison in comparisons if comparison.significant]
    noise = [comparison for comparison in comparisons if comparison.tested and not comparison.significant]
    untested = [comparison for comparison in comparisons if not comparison.tested]
    sentences = []
    if significant:
        sentences.append(f"Significant at {ALPHA} after Holm correction: SDMC-Seg differs from "
                         + "; ".join(_described(comparison) for comparison in significant) + ".")
    else:
        sentences.append(f"No difference from SDMC-Seg is significant at {ALPHA} after Holm correction.")
    if noise:
        sentences.append(f"Within noise (not significant at {ALPHA} after Holm correction): "
                         + "; ".join(_described(comparison) for comparison in noise) + ".")
    if few := [comparison for comparison in noise if comparison.n_patients < FEWEST_PATIENTS_FOR_SIGNIFICANCE]:
        sentences.append(f"With fewer than {FEWEST_PATIENTS_FOR_SIGNIFICANCE} patients paired no two-sided Wilcoxon "
                         f"test can reach {ALPHA} (its smallest exact p is 2/2^n), whatever the difference: "
                         + ", ".join(display_name(comparison.second) for comparison in few) + ".")
    if untested:
        sentences.append("Not tested: " + "; ".join(f"{display_name(comparison.second)} ({comparison.reason})"
                                                    for comparison in untested) + ".")
    return sentences


def paired_blocks(pooled: dict[str, PooledValidation], patient_of: Mapping[str, str]) -> list[Block]:
    description = (
        f"SDMC-Seg ({PROPOSED}) against each other segmentation model: per patient, the mean of the IS and HS slice "
        "DSCs (one score per lesion class a slice's reference holds, as the Stroke2021 protocol scores slices) over "
        "the slices both models have validation predictions for; these per-patient means are paired over the "
        "patients that have one under both models (a patient without a lesion slice has none, and the patients of "
        "folds one model lacks are left out), and compared by a two-sided Wilcoxon signed-rank test "
        f"(`scipy.stats.wilcoxon`), its p-values Holm-corrected over the comparisons tested (significant: "
        f"corrected p ≤ {ALPHA})."
    )
    if PROPOSED not in pooled or not pooled[PROPOSED].table.cases:
        return [description, f"{PROPOSED} has no validation with per-case scores here: no paired test is made."]
    others = [validation for trainer, validation in pooled.items() if trainer != PROPOSED]
    if not others:
        return [description, "No other segmentation model is trained: no paired test is made."]
    comparisons = holm_correct([paired_wilcoxon(PROPOSED, pooled[PROPOSED].table, other.trainer, other.table,
                                                patient_of) for other in others])
    return [description, comparison_table(comparisons, pooled), *verdict_sentences(comparisons)]


def statistics_section(results: Results) -> Section:
    """Per model its pooled validation with 95% bootstrap intervals over patients and HD95; SDMC-Seg's paired tests."""
    pooled = {model.trainer: pooled_validation(model) for model in results.segmentation_models}
    lookup = patient_lookup(results, [case for validation in pooled.values() for case in validation.table.cases])
    if lookup.patient_of is None:
        return Section(TITLE, [f"Left out: {lookup.reason}. Intervals and tests over patients need to know each "
                               "slice's patient (slices of one patient are not independent)."])
    blocks = [
        "Each model's validation pooled over its folds ('folds pooled'; a model with fewer folds covers fewer "
        "patients): the Stroke2021 score of all those slices together, and in brackets its 95% bootstrap interval "
        f"over patients ({BOOTSTRAP_DRAWS} draws of the patients with replacement, seed {BOOTSTRAP_SEED}, each draw's "
        "slices scored by the protocol). HD95 (mm): the mean over the cases where both prediction and reference hold "
        "the class (nnU-Net), with its interval likewise; Mean: of IS and HS. Table 3 gives the mean ± std over "
        f"folds. Patients: `{lookup.case_info}` (PatientID, else StudyInstanceUID, else the slice itself).",
        interval_table(list(pooled.values()), lookup.patient_of),
    ]
    if without := [f"{trainer} fold {', '.join(validation.without_case_scores)}" for trainer, validation
                   in pooled.items() if validation.without_case_scores]:
        blocks += [f"Left out of the pooled statistics: folds whose summary.json predates per-case slice scores (re-run "
                   f"`sdmc_evaluate -d {results.dataset_id} -tr TRAINER -f FOLD -p {results.plans_name} -c "
                   f"{results.configuration}`):", BulletList(without)]
    return Section(TITLE, blocks + paired_blocks(pooled, lookup.patient_of))
