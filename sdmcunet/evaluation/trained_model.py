"""A trained model as the evaluation sees it: its folds' validation predictions and their references.

Validation predictions are `{model}/fold_{f}/validation/{case}{file_ending}` (optionally with
`{case}.npz` probabilities), written by `sdmc_train`; their references are the original label
maps in `{preprocessed}/gt_segmentations/`, and the cases of each fold come from
`splits_final.json`.
"""

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sdmcunet import paths
from sdmcunet.experiment_planning.splits import SPLITS_FILE, check_splits_format
from sdmcunet.raw_dataset import find_dataset, load_dataset_json
from sdmcunet.training.model_folder import fold_folder, model_folder
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json

_FOLD_FOLDER = re.compile(r"^fold_(\d+)$")


@dataclass(frozen=True)
class CasePair:
    """One case to score: its reference and prediction label-map files."""

    case: str
    reference: Path
    prediction: Path


def preprocessed_dataset(dataset_id: int) -> Path:
    """The preprocessed folder of a dataset: its splits, references and name."""
    return find_dataset(paths.preprocessed_root(), dataset_id)


def crossval_folder_name(folds: list[int]) -> str:
    """nnU-Net's name for the cross-validation results of these folds."""
    return "crossval_results_folds_" + "_".join(str(fold) for fold in folds)


@dataclass(frozen=True)
class TrainedModel:
    dataset_id: int
    preprocessed: Path  # the dataset's preprocessed folder
    trainer: str
    plans: str
    configuration: str

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def folder(self) -> Path:
        return model_folder(self.preprocessed.name, self.trainer, self.plans, self.configuration)

    def train_command(self, fold: int | str, *options: str) -> str:
        return " ".join(["sdmc_train", str(self.dataset_id), self.configuration, str(fold), "-tr", self.trainer,
                         "-p", self.plans, *options])

    def validation_folder(self, fold: int) -> Path:
        return fold_folder(self.folder, fold) / "validation"

    def folds_found(self) -> list[int]:
        """The numbered folds that have a folder, in order."""
        if not self.folder.is_dir():
            raise SDMCError(f"no trained model in {self.folder}; train its folds with "
                            f"`{self.train_command('FOLD')}` (FOLD 0 to 4)")
        matches = (_FOLD_FOLDER.match(child.name) for child in self.folder.iterdir() if child.is_dir())
        folds = sorted(int(match[1]) for match in matches if match)
        if not folds:
            raise SDMCError(f"{self.folder} holds no fold_N folder; train one with `{self.train_command(0)}`")
        return folds

    def has_validation(self, fold: int) -> bool:
        return self.validation_folder(fold).is_dir()

    def check_validation(self, fold: int) -> None:
        """An error naming the command that creates the fold's validation predictions, if they are missing."""
        if not self.has_validation(fold):
            raise SDMCError(f"no validation predictions of fold {fold} in {self.validation_folder(fold)}; make them "
                            f"with `{self.train_command(fold)}` (add --val if the fold is already trained)")

    @cached_property
    def file_ending(self) -> str:
        return load_dataset_json(self.preprocessed).file_ending

    @cached_property
    def splits(self) -> list[dict]:
        path = self.preprocessed / SPLITS_FILE
        if not path.is_file():
            raise SDMCError(f"{path} missing; run sdmc_plan_and_preprocess -d {self.dataset_id}")
        splits = read_json(path)
        check_splits_format(splits, path)
        return splits

    def validation_cases(self, fold: int) -> list[str]:
        if not 0 <= fold < len(self.splits):
            raise SDMCError(f"fold {fold} does not exist: {self.preprocessed / SPLITS_FILE} has "
                            f"{len(self.splits)} folds")
        return list(self.splits[fold]["val"])

    def reference(self, case: str) -> Path:
        """The case's original label map, as preprocessing stored it."""
        return self.preprocessed / "gt_segmentations" / f"{case}{self.file_ending}"

    def validation_pairs(self, fold: int) -> list[CasePair]:
        """The fold's validation cases with their reference and prediction files (which may be missing)."""
        self.check_validation(fold)
        return [CasePair(case, self.reference(case), self.validation_folder(fold) / f"{case}{self.file_ending}")
                for case in self.validation_cases(fold)]
