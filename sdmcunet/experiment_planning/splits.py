"""Cross-validation splits (`splits_final.json`) grouped by patient and stratified by class.

A patient is the DICOM PatientID, else the StudyInstanceUID, else the case itself (datasets
made for nnU-Net have no `case_info.json`). No patient is ever on both sides of a fold. The
optional held-out test set moves whole patients to `imagesTs/labelsTs` of the raw dataset.
"""

import logging
import os
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from sdmcunet.imageio import read_label_slice
from sdmcunet.raw_dataset import DATASET_FILE, image_file_name, label_file_name, load_dataset_json, training_cases
from sdmcunet.results.splits import SPLITS_FILE, check_case_names, check_splits_format
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_json, read_json

log = logging.getLogger("sdmcunet.splits")
HOLDOUT_FILE = "holdout.json"
NUM_FOLDS = 5
SEED = 12345


class TooFewPatients(SDMCError):
    """Cross-validation is impossible; training on all cases (fold 'all') still works."""


def patient_of_each_case(raw_folder: Path, cases: list[str]) -> dict[str, str]:
    info_path = raw_folder / "case_info.json"
    info = read_json(info_path) if info_path.is_file() else {}
    return {case: info.get(case, {}).get("patient_id") or info.get(case, {}).get("study_uid") or case
            for case in cases}


def stratum(classes: set[int]) -> str:
    """The lesion classes a patient shows, e.g. '1', '1+2' or '-' (none)."""
    return "+".join(str(label) for label in sorted(classes - {0})) or "-"


def make_splits(patients: dict[str, str], classes_per_case: dict[str, list[int]], num_folds: int = NUM_FOLDS,
                seed: int = SEED) -> list[dict]:
    """Folds with balanced cases per stratum; each patient's cases stay together."""
    cases_of: dict[str, list[str]] = defaultdict(list)
    classes_of: dict[str, set[int]] = defaultdict(set)
    for case, patient in patients.items():
        cases_of[patient].append(case)
        classes_of[patient].update(classes_per_case[case])
    if len(cases_of) < num_folds:
        raise TooFewPatients(f"{num_folds}-fold cross-validation needs at least {num_folds} patients, the dataset has "
                        f"{len(cases_of)}; train on fold 'all' or provide your own {SPLITS_FILE}")
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(cases_of):
        by_stratum[stratum(classes_of[patient])].append(patient)
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    rng = random.Random(seed)
    for name in sorted(by_stratum):
        members = by_stratum[name]
        rng.shuffle(members)
        members.sort(key=lambda patient: -len(cases_of[patient]))  # stable: big patients first, rest shuffled
        in_stratum = [0] * num_folds
        for patient in members:
            fold = min(range(num_folds), key=lambda f: (in_stratum[f], len(folds[f]), f))
            folds[fold].extend(cases_of[patient])
            in_stratum[fold] += len(cases_of[patient])
    all_cases = sorted(patients)
    return [{"train": sorted(set(all_cases) - set(fold)), "val": sorted(fold)} for fold in folds]


def check_splits(splits, patients: dict[str, str], source: Path) -> None:
    """A user's splits must name known cases and never put a patient on both sides."""
    check_splits_format(splits, source)
    problems = []
    for index, split in enumerate(splits):
        unknown = sorted((set(split["train"]) | set(split["val"])) - set(patients))
        if unknown:
            problems.append(f"fold {index}: unknown cases {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        leaking = sorted({patients[c] for c in split["train"] if c in patients} & {patients[c] for c in split["val"] if c in patients})
        if leaking:
            problems.append(f"fold {index}: patients on both sides {leaking[:5]}{' ...' if len(leaking) > 5 else ''}")
    if problems:
        raise SDMCError(f"{source}: invalid splits:\n  " + "\n  ".join(problems))


def load_or_create_splits(preprocessed_folder: Path, raw_folder: Path, fingerprint: dict) -> list[dict]:
    path = preprocessed_folder / SPLITS_FILE
    patients = patient_of_each_case(raw_folder, fingerprint["cases"])
    if path.is_file():
        splits = read_json(path)
        check_splits(splits, patients, path)
        log.info("using the existing splits in %s", path)
        return splits
    splits = make_splits(patients, dict(zip(fingerprint["cases"], fingerprint["classes_per_case"])))
    atomic_write_json(path, splits)
    log.info("wrote %d folds grouped by %d patients to %s", len(splits), len(set(patients.values())), path)
    return splits


def move_holdout(raw_folder: Path, fraction: float, seed: int = SEED) -> list[str]:
    """Move about `fraction` of the patients (stratified) to imagesTs/labelsTs, once.

    The chosen cases are recorded before anything moves, so an interrupted run finishes the
    same moves when run again.
    """
    record = raw_folder / HOLDOUT_FILE
    dataset = load_dataset_json(raw_folder)
    if record.is_file():
        held_out = _recorded_holdout(record, raw_folder, dataset.file_ending)
    else:
        if not 0 < fraction < 1:
            raise SDMCError(f"the held-out fraction must lie between 0 and 1, got {fraction}")
        cases = training_cases(raw_folder, dataset)
        classes = {case: np.unique(read_label_slice(raw.label)[0]).tolist() for case, raw in cases.items()}
        patients = patient_of_each_case(raw_folder, list(cases))
        held_out = make_splits(patients, classes, num_folds=max(2, round(1 / fraction)), seed=seed)[0]["val"]
        atomic_write_json(record, {"fraction": fraction, "seed": seed, "cases": held_out})
    for case in held_out:
        _move_case(raw_folder, case, dataset.file_ending, len(dataset.channel_names))
    content = read_json(raw_folder / DATASET_FILE)
    content["numTraining"] = len(list((raw_folder / "labelsTr").glob(f"*{dataset.file_ending}")))
    atomic_write_json(raw_folder / DATASET_FILE, content)
    return held_out


def _recorded_holdout(record: Path, raw_folder: Path, file_ending: str) -> list[str]:
    """The cases `holdout.json` lists: valid names of cases of this dataset (in labelsTr, or moved already)."""
    content = read_json(record)
    cases = content.get("cases") if isinstance(content, dict) else None
    if not isinstance(cases, list):
        raise SDMCError(f"{record}: expected {{'cases': [case, ...], ...}}")
    check_case_names(cases, record)
    unknown = [case for case in cases if not any((raw_folder / folder / label_file_name(case, file_ending)).is_file()
                                                 for folder in ("labelsTr", "labelsTs"))]
    if unknown:
        raise SDMCError(f"{record}: lists case(s) the dataset does not have: {', '.join(unknown[:5])}")
    return cases


def _move_case(raw_folder: Path, case: str, file_ending: str, num_channels: int) -> None:
    moves = [(f"imagesTr/{image_file_name(case, c, file_ending)}", f"imagesTs/{image_file_name(case, c, file_ending)}")
             for c in range(num_channels)]
    moves.append((f"labelsTr/{label_file_name(case, file_ending)}", f"labelsTs/{label_file_name(case, file_ending)}"))
    for source, target in moves:
        (raw_folder / target).parent.mkdir(exist_ok=True)
        if (raw_folder / source).exists():
            os.replace(raw_folder / source, raw_folder / target)
