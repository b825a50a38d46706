"""Statistics over patients: bootstrap intervals, paired Wilcoxon tests, Holm correction, and the
`patients` block of summary.json (with its null-with-reason path), each checked against an
independent computation."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from fake_results import DATASET, NIFTI, label_map, make_dataset, model_folder, write_label_maps
from scipy.stats import wilcoxon

from sdmcunet.evaluation.evaluate_predictions import main as evaluate
from sdmcunet.evaluation.statistics import (
    CaseTable, PairedComparison, holm, holm_correct, paired_wilcoxon, patient_intervals, pooled_scores,
)
from sdmcunet.raw_dataset import make_dataset_json
from sdmcunet.labels import LABELS
from sdmcunet.reporting.patient_statistics import verdict_sentences
from sdmcunet.utils.files import atomic_write_json

CLASSES = ("IS", "HS", "Mean")


def direct_intervals(values: np.ndarray, patient_of_case: list[str], draws: int, seed: int) -> list:
    """The bootstrap written out: per draw, copy the drawn patients' slices, score them, take percentiles.

    `values` is (case, IS/HS) with NaN where the class is absent; returns [IS, HS, Mean] intervals."""
    patients = sorted(set(patient_of_case))
    rows_of = {patient: [row for row, owner in enumerate(patient_of_case) if owner == patient] for patient in patients}
    drawn = np.random.default_rng(seed).integers(len(patients), size=(draws, len(patients)))
    scores = []
    for draw in drawn:
        slices = values[[row for index in draw for row in rows_of[patients[index]]]]
        class_scores = [np.mean(column[~np.isnan(column)]) if (~np.isnan(column)).any() else math.nan
                        for column in slices.T]
        defined = [score for score in class_scores if not math.isnan(score)]
        scores.append([*class_scores, np.mean(defined) if defined else math.nan])
    scores = np.array(scores)
    return [list(np.percentile(column[~np.isnan(column)], [2.5, 97.5])) if (~np.isnan(column)).any() else None
            for column in scores.T]


def random_table(rng: np.random.Generator, n_cases: int, n_patients: int) -> tuple[CaseTable, dict[str, str]]:
    """Random scores; about half the slices lack IS, most lack HS, and patient 'p0' alone holds HS."""
    patient_of = {f"c{index:02d}": f"p{rng.integers(n_patients)}" for index in range(n_cases)}
    patient_of["c00"] = "p0"
    scores = {}
    for score in ("DSC", "IoU", "mIoU", "HD95"):
        values = rng.uniform(0, 1, (n_cases, 2)) * (20 if score == "HD95" else 1)
        values[rng.uniform(size=n_cases) < 0.5, 0] = np.nan
        values[[patient_of[case] != "p0" for case in patient_of], 1] = np.nan
        values[0] = rng.uniform(0, 1, 2)  # p0 holds both classes
        scores[score] = values
    return CaseTable(tuple(patient_of), scores), patient_of


def test_bootstrap_interval_matches_a_direct_resampling_of_patients():
    table, patient_of = random_table(np.random.default_rng(7), n_cases=30, n_patients=6)
    intervals = patient_intervals(table, patient_of, draws=300, seed=11)
    for score, values in table.scores.items():
        expected = direct_intervals(values, [patient_of[case] for case in table.cases], draws=300, seed=11)
        for name, interval in zip(CLASSES, expected):
            assert intervals[score][name] == pytest.approx(interval), (score, name)
    # HS lies in one patient: about a third of the draws lack p0, have no HS and are left out of its interval
    assert intervals["DSC"]["HS"] is not None


def test_bootstrap_properties_one_patient_and_empty_input():
    # a single patient: every draw is that patient, so the interval collapses onto the score
    table = CaseTable(("a", "b"), {"DSC": np.array([[0.2, np.nan], [0.6, np.nan]])})
    intervals = patient_intervals(table, {"a": "p", "b": "p"}, draws=50)
    assert intervals["DSC"]["IS"] == pytest.approx([0.4, 0.4]) and intervals["DSC"]["Mean"] == pytest.approx([0.4, 0.4])
    assert intervals["DSC"]["HS"] is None  # no slice holds HS: no interval, no crash
    assert math.isnan(pooled_scores(table)["DSC"]["HS"]) and pooled_scores(table)["DSC"]["Mean"] == pytest.approx(0.4)
    empty = CaseTable((), {"DSC": np.zeros((0, 2))})
    assert patient_intervals(empty, {}) == {"DSC": {"IS": None, "HS": None, "Mean": None}}


# --- paired Wilcoxon over patients -----------------------------------------------------------------

# Per case: patient, DSC IS and HS of model A, of model B (NaN: the reference lacks the class).
PAIRED = {
    "a1": ("P1", 0.9, np.nan, 0.7, np.nan),
    "a2": ("P1", 0.5, 0.7, 0.4, 0.8),  # both classes: two scores for P1
    "b1": ("P2", 0.8, np.nan, 0.6, np.nan),
    "c1": ("P3", np.nan, 0.6, np.nan, 0.65),
    "d1": ("P4", 0.3, np.nan, 0.1, np.nan),
    "d2": ("P4", np.nan, np.nan, np.nan, np.nan),  # no lesion: no score, but P4 has d1
    "e1": ("P5", 0.55, np.nan, 0.5, np.nan),
    "f1": ("P6", 0.95, np.nan, 0.6, np.nan),
    "g1": ("P7", np.nan, np.nan, np.nan, np.nan),  # P7 has no lesion slice: no mean Dice, not paired
    "h1": ("P8", 0.2, np.nan, 0.35, np.nan),
}
# The per-patient mean Dice by hand: mean of every IS/HS score of the patient's slices.
MEANS_A = {"P1": (0.9 + 0.5 + 0.7) / 3, "P2": 0.8, "P3": 0.6, "P4": 0.3, "P5": 0.55, "P6": 0.95, "P8": 0.2}
MEANS_B = {"P1": (0.7 + 0.4 + 0.8) / 3, "P2": 0.6, "P3": 0.65, "P4": 0.1, "P5": 0.5, "P6": 0.6, "P8": 0.35}


def paired_tables(cases_of_b: list[str] | None = None) -> tuple[CaseTable, CaseTable, dict[str, str]]:
    def table(columns: slice, cases: list[str]) -> CaseTable:
        dice = np.array([PAIRED[case][columns] for case in cases], dtype=float).reshape(-1, 2)
        return CaseTable(tuple(cases), {"DSC": dice})

    cases_of_b = list(PAIRED) if cases_of_b is None else cases_of_b
    return (table(slice(1, 3), list(PAIRED)), table(slice(3, 5), cases_of_b),
            {case: row[0] for case, row in PAIRED.items()})


def test_wilcoxon_p_value_is_scipys_on_hand_built_per_patient_means():
    first, second, patient_of = paired_tables()
    comparison = paired_wilcoxon("A", first, "B", second, patient_of)
    patients = sorted(MEANS_A)  # P7 has no lesion slice
    expected = wilcoxon([MEANS_A[p] for p in patients], [MEANS_B[p] for p in patients])
    assert comparison.tested and comparison.n_patients == 7 and comparison.n_cases == len(PAIRED)
    assert comparison.p_value == pytest.approx(expected.pvalue) and comparison.statistic == expected.statistic
    assert comparison.median_difference == pytest.approx(np.median([MEANS_A[p] - MEANS_B[p] for p in patients]))


def test_a_model_with_fewer_folds_is_compared_on_the_shared_patients_only():
    # B predicted only the slices of P1, P4 and P6 (its other folds are missing); a2 of P1 among them
    first, second, patient_of = paired_tables(["a1", "a2", "d1", "d2", "f1"])
    comparison = paired_wilcoxon("A", first, "B", second, patient_of)
    shared = ["P1", "P4", "P6"]
    expected = wilcoxon([MEANS_A[p] for p in shared], [MEANS_B[p] for p in shared])
    assert (comparison.n_cases, comparison.n_patients) == (5, 3)
    assert comparison.p_value == pytest.approx(expected.pvalue)
    # of P1, only a1 shared: A's mean over a1 alone, not over a1 and a2
    first, second, _ = paired_tables(["a1", "d1", "f1"])
    comparison = paired_wilcoxon("A", first, "B", second, patient_of)
    expected = wilcoxon([0.9, MEANS_A["P4"], MEANS_A["P6"]], [0.7, MEANS_B["P4"], MEANS_B["P6"]])
    assert comparison.p_value == pytest.approx(expected.pvalue)


def test_no_shared_patients_or_no_difference_is_not_tested_and_says_why():
    first, second, patient_of = paired_tables([])  # B predicted nothing A did
    comparison = paired_wilcoxon("A", first, "B", second, patient_of)
    assert not comparison.tested and "no shared patients" in comparison.reason
    assert math.isnan(comparison.p_value) and comparison.n_patients == 0
    same = paired_wilcoxon("A", first, "A", first, patient_of)
    assert not same.tested and "same mean Dice" in same.reason
    lesion_free = paired_wilcoxon("A", first, "B", paired_tables(["d2", "g1"])[1], patient_of)
    assert not lesion_free.tested and "lesion slice" in lesion_free.reason


def test_holm_against_a_hand_computation():
    # m = 4 tested: 0.01 * 4 = 0.04; 0.03 * 3 = 0.09; 0.04 * 2 = 0.08 -> 0.09 (monotone); 0.5 * 1 = 0.5
    adjusted = holm([0.01, 0.04, 0.03, math.nan, 0.5])
    assert adjusted[:3] == pytest.approx([0.04, 0.09, 0.09]) and math.isnan(adjusted[3]) and adjusted[4] == 0.5
    assert holm([0.6, 0.7]) == [1.0, 1.0] and holm([]) == []


def comparison(second: str, p_value: float, n_patients: int = 12, reason: str | None = None) -> PairedComparison:
    return PairedComparison("SDMCFinetunedTrainer", second, 2 * n_patients, n_patients, 0.05, 1.0, p_value, reason)


def test_significance_words_after_holm():
    compared = holm_correct([comparison("UNetTrainer", 0.001), comparison("SegResNetTrainer", 0.03),
                             comparison("SwinUNETRTrainer", math.nan, 0, "no shared patients (no slice predicted "
                                                                         "by both)")])
    # Holm over the two tested: 0.001 * 2 = 0.002 (significant); 0.03 * 1 = 0.03 -> significant too
    assert [c.adjusted_p for c in compared[:2]] == pytest.approx([0.002, 0.03]) and math.isnan(compared[2].adjusted_p)
    words = " ".join(verdict_sentences(compared))
    assert "Significant at 0.05 after Holm correction: SDMC-Seg differs from UNetTrainer (U-Net)" in words
    assert "SegResNetTrainer (SegResNet) (median difference +0.050 over 12 patients, Holm p = 0.03)" in words
    assert "Not tested: SwinUNETRTrainer (Swin-UNETR) (no shared patients" in words
    compared = holm_correct([comparison("UNetTrainer", 0.04), comparison("SegResNetTrainer", 0.2, n_patients=5)])
    words = " ".join(verdict_sentences(compared))  # 0.04 * 2 = 0.08: no longer significant
    assert "No difference from SDMC-Seg is significant at 0.05 after Holm correction." in words
    assert "Within noise (not significant at 0.05 after Holm correction): UNetTrainer (U-Net)" in words
    assert "fewer than 6 patients" in words and words.rstrip(".").endswith("SegResNetTrainer (SegResNet)")


# --- the `patients` block of summary.json ------------------------------------------------------------

# case -> (patient, prediction, reference), 8x8
SLICES = {
    "s1": ("A", label_map((8, 8), IS=np.s_[1:5, 2:6]), label_map((8, 8), IS=np.s_[2:6, 2:6])),
    "s2": ("A", label_map((8, 8), IS=np.s_[2:6, 2:5]), label_map((8, 8), IS=np.s_[2:6, 2:6])),
    "s3": ("B", label_map((8, 8), HS=np.s_[0:3, 0:3]), label_map((8, 8), HS=np.s_[1:4, 1:4])),
    "s4": ("B", label_map((8, 8)), label_map((8, 8))),
    "s5": ("C", label_map((8, 8), IS=np.s_[3:7, 3:7]), label_map((8, 8), IS=np.s_[3:7, 3:7], HS=np.s_[0:2, 0:8])),
    "s6": ("D", label_map((8, 8), IS=np.s_[4:6, 4:6]), label_map((8, 8), IS=np.s_[4:8, 4:8])),
}


def raw_dataset(root: Path, with_case_info: bool = True) -> Path:
    """A raw dataset with the slices' references in labelsTr (and their patients in case_info.json)."""
    folder = root / DATASET
    atomic_write_json(folder / "dataset.json", make_dataset_json({0: "CT"}, LABELS, len(SLICES), ".png"))
    write_label_maps(folder / "labelsTr", {case: reference for case, (_, _, reference) in SLICES.items()})
    if with_case_info:
        atomic_write_json(folder / "case_info.json", {case: {"patient_id": patient, "study_uid": "one study"}
                                                      for case, (patient, _, _) in SLICES.items()})
    return folder


def evaluate_raw(tmp_path: Path, with_case_info: bool = True) -> dict:
    labels = raw_dataset(tmp_path / "raw", with_case_info) / "labelsTr"
    write_label_maps(tmp_path / "pred", {case: prediction for case, (_, prediction, _) in SLICES.items()})
    assert evaluate(["-ref", str(labels), "-pred", str(tmp_path / "pred"), "-np", "1"]) == 0
    return json.loads((tmp_path / "pred" / "summary.json").read_text())


def test_patients_block_holds_bootstrap_intervals_over_patients(tmp_path):
    summary = evaluate_raw(tmp_path)
    block = summary["patients"]
    assert block["reason"] is None and block["n_patients"] == 4 and block["n_cases"] == len(SLICES)
    assert block["case_info"] == str((tmp_path / "raw" / DATASET / "case_info.json").resolve())
    assert block["bootstrap"]["draws"] == 2000 and block["bootstrap"]["seed"] == 0
    patients = [SLICES[entry["case"]][0] for entry in summary["metric_per_case"]]
    for metric in ("DSC", "IoU", "mIoU"):
        values = np.array([[np.nan if entry["stroke2021"][metric][name] is None else entry["stroke2021"][metric][name]
                            for name in ("IS", "HS")] for entry in summary["metric_per_case"]])
        expected = direct_intervals(values, patients, draws=2000, seed=0)
        for name, interval in zip(CLASSES, expected):
            assert block["ci95"][metric][name] == pytest.approx(interval), (metric, name)
    # the per-case slice scores are the protocol's: their class means are the stroke2021 block
    dsc_is = [entry["stroke2021"]["DSC"]["IS"] for entry in summary["metric_per_case"]]
    assert np.mean([value for value in dsc_is if value is not None]) == pytest.approx(summary["stroke2021"]["DSC"]["IS"])
    assert block["HD95"]["IS"] == pytest.approx(summary["hd95"]["IS"])
    assert block["HD95"]["Mean"] == pytest.approx((summary["hd95"]["IS"] + summary["hd95"]["HS"]) / 2)
    assert block["ci95"]["HD95"]["IS"][0] <= block["HD95"]["IS"] <= block["ci95"]["HD95"]["IS"][1]


@pytest.mark.parametrize("where", ["no case_info.json", "not a raw dataset"])
def test_without_patients_the_block_is_null_with_the_reason(tmp_path, where):
    if where == "no case_info.json":
        summary = evaluate_raw(tmp_path, with_case_info=False)
    else:
        write_label_maps(tmp_path / "ref", {case: reference for case, (_, _, reference) in SLICES.items()})
        write_label_maps(tmp_path / "pred", {case: prediction for case, (_, prediction, _) in SLICES.items()})
        assert evaluate(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-np", "1"]) == 0
        summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    block = summary["patients"]
    assert block["n_patients"] is None and block["ci95"] is None and block["case_info"] is None
    assert ("case_info.json" if where == "no case_info.json" else "labelsTr") in block["reason"]
    assert block["HD95"]["IS"] == pytest.approx(summary["hd95"]["IS"])  # HD95 needs no patients


def test_a_models_validation_finds_its_raw_dataset_for_the_patients(tmp_path):
    references = {case: reference for case, (_, _, reference) in SLICES.items()}
    folds = [["s1", "s2", "s3"], ["s4", "s5", "s6"]]
    make_dataset(references, folds)
    write_label_maps(model_folder("AlphaTrainer") / "fold_0" / "validation",
                     {case: SLICES[case][1] for case in folds[0]}, NIFTI)
    assert evaluate(["-d", "2021", "-tr", "AlphaTrainer", "-f", "0", "-np", "1"]) == 0
    summary_path = model_folder("AlphaTrainer") / "fold_0" / "validation" / "summary.json"
    assert "no raw dataset" in json.loads(summary_path.read_text())["patients"]["reason"]
    raw_dataset(Path(os.environ["SDMC_raw"]))
    assert evaluate(["-d", "2021", "-tr", "AlphaTrainer", "-f", "0", "-np", "1"]) == 0
    block = json.loads(summary_path.read_text())["patients"]
    assert block["reason"] is None and block["n_patients"] == 2 and block["n_cases"] == 3  # A (s1, s2), B (s3)
