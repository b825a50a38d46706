"""Names and places in a results folder (see the package's docstring); nothing else spells them."""

from pathlib import Path

from sdmcunet import paths, raw_dataset

PLANS_FILE = "plans.json"
DATASET_FILE = raw_dataset.DATASET_FILE  # a model folder keeps a copy of its dataset's
FINGERPRINT_FILE = "dataset_fingerprint.json"
VALIDATION_FOLDER = "validation"
SUMMARY_FILE = "summary.json"
REFERENCES_FOLDER = "gt_segmentations"  # in the preprocessed dataset: the original label maps
TRAINING_LOG = "training_log.txt"
PROGRESS_PLOT = "progress.png"
CHECKPOINT_KINDS = ("best", "final", "latest")
_SEPARATOR = "__"
_FOLD_PREFIX = "fold_"
_CROSSVAL_PREFIX = "crossval_results_folds_"


def checkpoint_file(kind: str) -> str:
    """`checkpoint_final.pth` and the like."""
    return f"checkpoint_{kind}.pth"


FINAL_CHECKPOINT = checkpoint_file("final")
CHECKPOINT_PATTERN = checkpoint_file("*")


def model_folder_name(trainer: str, plans_name: str, configuration: str) -> str:
    return _SEPARATOR.join((trainer, plans_name, configuration))


def parse_model_folder_name(name: str) -> tuple[str, str, str] | None:
    """(trainer, plans name, configuration) of a model folder's name, or None for any other folder."""
    parts = name.split(_SEPARATOR)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def model_folder(dataset_name: str, trainer: str, plans_name: str, configuration: str) -> Path:
    return paths.results_root() / dataset_name / model_folder_name(trainer, plans_name, configuration)


def fold_folder(model: Path, fold: int | str) -> Path:
    return model / f"{_FOLD_PREFIX}{fold}"


def fold_name(folder: Path) -> str | None:
    """The fold a folder is the fold folder of ("0".."4", "all"), or None."""
    return folder.name.removeprefix(_FOLD_PREFIX) if folder.name.startswith(_FOLD_PREFIX) else None


def validation_folder(fold: Path) -> Path:
    return fold / VALIDATION_FOLDER


def crossval_folder(model: Path, folds: list[int]) -> Path:
    """nnU-Net's folder for the cross-validation results of these folds scored together."""
    return model / (_CROSSVAL_PREFIX + "_".join(str(fold) for fold in folds))


def crossval_folds(folder: Path) -> str | None:
    """"0, 1, 2" for a cross-validation results folder, else None."""
    if not folder.name.startswith(_CROSSVAL_PREFIX):
        return None
    return folder.name.removeprefix(_CROSSVAL_PREFIX).replace("_", ", ")


def references_folder(preprocessed: Path) -> Path:
    return preprocessed / REFERENCES_FOLDER
