"""A trained model as every stage after training sees it: its folder, its folds, their checkpoints,
validations and summaries, and (with the dataset's preprocessed folder) the validation cases and
their references.

Evaluation, model selection, ensembling, reporting and inference all read a model folder through
`TrainedModel`; training writes it (`write_model_description`, checkpoints, validation).
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sdmcunet import paths
from sdmcunet.experiment_planning.plans_manager import PlansManager
from sdmcunet.raw_dataset import DatasetJson, dataset_id_of, folders_with_id, load_dataset_json
from sdmcunet.results import layout
from sdmcunet.results.checkpoints import load_checkpoint
from sdmcunet.results.history import TrainingHistory
from sdmcunet.results.splits import fold_cases, load_splits
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_bytes, atomic_write_json, read_json



@dataclass(frozen=True)
class CasePair:
    """One case to score: its reference and prediction label-map files."""

    case: str
    reference: Path
    prediction: Path


@dataclass(frozen=True)
class FoldResult:
    """A fold of a trained model and what its training left in its folder."""

    name: str  # "0".."4", or "all" (trained on every case)
    folder: Path

    @property
    def is_cross_validation(self) -> bool:
        """Fold 'all' validates on its own training cases: not a held-out result."""
        return self.name.isdigit()

    @property
    def checkpoint(self) -> Path:
        return self.folder / layout.FINAL_CHECKPOINT

    @property
    def validation(self) -> Path:
        return layout.validation_folder(self.folder)

    @cached_property
    def summary(self) -> dict | None:
        path = self.validation / layout.SUMMARY_FILE
        return read_json(path) if path.is_file() else None

    def history(self) -> TrainingHistory:
        # mmap: only the history is read, not the (possibly gigabytes of) weights
        return TrainingHistory.from_state(load_checkpoint(self.checkpoint, mmap=True)["history"])


@dataclass(frozen=True)
class TrainedModel:
    """A model folder; `preprocessed` (its dataset's preprocessed folder) is needed for splits and references."""

    folder: Path
    preprocessed: Path | None = None

    @classmethod
    def of(cls, dataset_name: str, trainer: str, plans_name: str, configuration: str,
           preprocessed: Path | None = None) -> "TrainedModel":
        """The model folder of these names below $SDMC_results (which may not exist yet)."""
        return cls(layout.model_folder(dataset_name, trainer, plans_name, configuration), preprocessed)

    @classmethod
    def find(cls, dataset_id: int, trainer: str, plans_name: str, configuration: str) -> "TrainedModel":
        """The existing model of a dataset in $SDMC_results; an error naming how to train it."""
        datasets = folders_with_id(paths.results_root(), dataset_id)
        if len(datasets) != 1:
            raise SDMCError(f"{paths.results_root()}: {'no' if not datasets else 'more than one'} results folder "
                            f"Dataset{dataset_id:03d}_<Name>; train a model with `sdmc_train {dataset_id} ...` "
                            f"or point SDMC_results to where the models are")
        # a trainer given as package.module:ClassName has its class name in the folder name
        model = cls.of(datasets[0].name, trainer.split(":")[-1], plans_name, configuration)
        if not model.folder.is_dir():
            raise SDMCError(f"{model.folder}: no such model; train it with `{model.train_command(0)}` "
                            f"(and the other folds)")
        return model

    # --- what its folder says -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def _names(self) -> tuple[str, str, str]:
        parsed = layout.parse_model_folder_name(self.folder.name)
        if parsed is None:
            raise SDMCError(f"{self.folder}: not named {{Trainer}}__{{Plans}}__{{configuration}}, as a model folder "
                            f"of the results is")
        return parsed

    @property
    def trainer(self) -> str:
        return self._names[0]

    @property
    def plans_name(self) -> str:
        return self._names[1]

    @property
    def configuration(self) -> str:
        return self._names[2]

    @property
    def dataset_id(self) -> int | None:
        return dataset_id_of(self.folder.parent.name)

    @cached_property
    def plans(self) -> PlansManager:
        return PlansManager.load(self.folder / layout.PLANS_FILE)

    @cached_property
    def dataset(self) -> DatasetJson:
        return load_dataset_json(self.folder)

    def train_command(self, fold: int | str, *options: str) -> str:
        return " ".join(["sdmc_train", str(self.dataset_id), self.configuration, str(fold), "-tr", self.trainer,
                         "-p", self.plans_name, *options])

    # --- its folds ----------------------------------------------------------------------------
    def fold(self, name: int | str) -> FoldResult:
        return FoldResult(str(name), layout.fold_folder(self.folder, name))

    def finished_folds(self, checkpoint: str = layout.FINAL_CHECKPOINT) -> list[FoldResult]:
        """The folds with `checkpoint`, cross-validation folds first, in order."""
        folds = [self.fold(name) for child in self.folder.glob("fold_*")
                 if (name := layout.fold_name(child)) and (child / checkpoint).is_file()]
        return sorted(folds, key=lambda fold: (not fold.is_cross_validation, int(fold.name) if fold.name.isdigit() else 0))

    def evaluated_folds(self) -> list[FoldResult]:
        """Finished cross-validation folds with a validation summary: what comparison tables average over."""
        return [fold for fold in self.finished_folds() if fold.is_cross_validation and fold.summary is not None]

    def numbered_folds(self) -> list[int]:
        """The numbered folds that have a folder, in order; an error naming how to train one when there is none."""
        if not self.folder.is_dir():
            raise SDMCError(f"no trained model in {self.folder}; train its folds with "
                            f"`{self.train_command('FOLD')}` (FOLD 0 to 4)")
        folds = sorted(int(name) for child in self.folder.iterdir()
                       if child.is_dir() and (name := layout.fold_name(child)) and name.isdigit())
        if not folds:
            raise SDMCError(f"{self.folder} holds no fold_N folder; train one with `{self.train_command(0)}`")
        return folds

    def validation_folder(self, fold: int | str) -> Path:
        return self.fold(fold).validation

    def has_validation(self, fold: int) -> bool:
        return self.validation_folder(fold).is_dir()

    def check_validation(self, fold: int) -> None:
        """An error naming the command that creates the fold's validation predictions, if they are missing."""
        if not self.has_validation(fold):
            raise SDMCError(f"no validation predictions of fold {fold} in {self.validation_folder(fold)}; make them "
                            f"with `{self.train_command(fold)}` (add --val if the fold is already trained)")

    def crossval_folder(self, folds: list[int]) -> Path:
        return layout.crossval_folder(self.folder, folds)

    def crossval_summaries(self) -> dict[str, dict]:
        """Pooled cross-validation summaries by fold list ("0, 1, 2")."""
        return {layout.crossval_folds(path.parent): read_json(path)
                for path in sorted(self.folder.glob(f"*/{layout.SUMMARY_FILE}")) if layout.crossval_folds(path.parent)}

    # --- its validation cases (with the preprocessed dataset) ------------------------------------
    @property
    def _preprocessed(self) -> Path:
        if self.preprocessed is None:
            raise SDMCError(f"{self.folder}: the preprocessed dataset (its splits and references) is not known")
        return self.preprocessed

    @cached_property
    def file_ending(self) -> str:
        return load_dataset_json(self._preprocessed).file_ending

    @cached_property
    def splits(self) -> list[dict]:
        return load_splits(self._preprocessed)

    def validation_cases(self, fold: int) -> list[str]:
        return list(fold_cases(self._preprocessed, fold)["val"])

    def reference(self, case: str) -> Path:
        """The case's original label map, as preprocessing stored it."""
        return layout.references_folder(self._preprocessed) / f"{case}{self.file_ending}"

    def validation_pairs(self, fold: int) -> list[CasePair]:
        """The fold's validation cases with their reference and prediction files (which may be missing)."""
        self.check_validation(fold)
        return [CasePair(case, self.reference(case), self.validation_folder(fold) / f"{case}{self.file_ending}")
                for case in self.validation_cases(fold)]


def models_in(dataset_folder: Path, plans_name: str, configuration: str,
              preprocessed: Path | None = None) -> list[TrainedModel]:
    """The model folders of a dataset's results folder for these plans and configuration, by trainer name."""
    if not dataset_folder.is_dir():
        return []
    return [TrainedModel(child, preprocessed) for child in sorted(dataset_folder.iterdir())
            if child.is_dir() and (names := layout.parse_model_folder_name(child.name))
            and names[1:] == (plans_name, configuration)]


def write_model_description(model: Path, preprocessed: Path, plans: dict) -> None:
    """Copy plans, dataset.json and fingerprint next to the folds (nnU-Net's self-contained model folder)."""
    model.mkdir(parents=True, exist_ok=True)
    atomic_write_json(model / layout.PLANS_FILE, plans)
    for name in (layout.DATASET_FILE, layout.FINGERPRINT_FILE):
        atomic_write_bytes(model / name, (preprocessed / name).read_bytes())
