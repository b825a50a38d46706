"""Reading a preprocessed dataset's cross-validation splits (`splits_final.json`), checked once, here.

`experiment_planning.splits` makes and writes them; training, evaluation and reporting read them
through `load_splits`: case names become file names, so every one is checked.
"""

from pathlib import Path

from sdmcunet.raw_dataset import case_name_problem
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json

SPLITS_FILE = "splits_final.json"


def splits_path(preprocessed: Path) -> Path:
    return preprocessed / SPLITS_FILE


def load_splits(preprocessed: Path) -> list[dict]:
    """The dataset's folds, [{'train': [case, ...], 'val': [case, ...]}, ...], checked."""
    path = splits_path(preprocessed)
    if not path.is_file():
        raise SDMCError(f"{path} missing; run sdmc_plan_and_preprocess, or train fold 'all'")
    splits = read_json(path)
    check_splits_format(splits, path)
    return splits


def fold_cases(preprocessed: Path, fold: int) -> dict:
    """{'train': [...], 'val': [...]} of one fold; an error naming the folds there are."""
    splits = load_splits(preprocessed)
    if not 0 <= fold < len(splits):
        raise SDMCError(f"fold {fold} does not exist: {splits_path(preprocessed)} has folds 0..{len(splits) - 1} "
                        f"(or 'all')")
    return splits[fold]


def check_splits_format(splits, source: Path) -> None:
    """Splits must be a list of folds, each {'train': [case, ...], 'val': [case, ...]}, of valid case names."""
    def is_case_list(value) -> bool:
        return isinstance(value, list) and all(isinstance(case, str) for case in value)

    if not isinstance(splits, list) or not all(
            isinstance(s, dict) and is_case_list(s.get("train")) and is_case_list(s.get("val")) for s in splits):
        raise SDMCError(f"{source}: expected a list of {{'train': [case, ...], 'val': [case, ...]}}")
    check_case_names([case for split in splits for case in (*split["train"], *split["val"])], source)


def check_case_names(cases: list, source: Path) -> None:
    """Case names read from `source` become file names: each must be one (raw_dataset.case_name_problem)."""
    problems = sorted({problem for case in cases if (problem := case_name_problem(case))})
    if problems:
        raise SDMCError(f"{source}: {len(problems)} invalid case name(s): {'; '.join(problems[:3])}")
