"""What a dataset's results folder holds: the trained models, their finished folds and summaries.

A model folder is `$SDMC_results/Dataset{ID}_{Name}/{Trainer}__{Plans}__{configuration}/`; a fold
is finished when `fold_{f}/checkpoint_final.pth` exists, and evaluated when its
`validation/summary.json` exists too.
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sdmcunet import paths
from sdmcunet.experiment_planning.plans import configuration
from sdmcunet.raw_dataset import DatasetJson, folders_with_id, load_dataset_json
from sdmcunet.reporting.published import TABLE3, TABLE4
from sdmcunet.training.checkpoints import load_checkpoint
from sdmcunet.training.mask_autoencoder_source import MASK_AUTOENCODER_TRAINER
from sdmcunet.training.progress import TrainingHistory
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json

# The models of the published comparison, in the order the report lists them; other trained
# models (users' own trainers) follow in alphabetical order.
EXPECTED_TRAINERS = (*dict.fromkeys(result.trainer for result in (*TABLE3, *TABLE4)), MASK_AUTOENCODER_TRAINER)
FINAL_CHECKPOINT = "checkpoint_final.pth"


@dataclass
class Fold:
    name: str  # "0".."4", or "all" (trained on every case)
    folder: Path

    @property
    def checkpoint(self) -> Path:
        return self.folder / FINAL_CHECKPOINT

    @property
    def validation(self) -> Path:
        return self.folder / "validation"

    @property
    def is_cross_validation(self) -> bool:
        """Fold 'all' validates on its own training cases: not a held-out result."""
        return self.name.isdigit()

    @cached_property
    def summary(self) -> dict | None:
        path = self.validation / "summary.json"
        return read_json(path) if path.is_file() else None

    def history(self) -> TrainingHistory:
        # mmap: only the history is read, not the (possibly gigabytes of) weights
        return TrainingHistory.from_state(load_checkpoint(self.checkpoint, mmap=True)["history"])


@dataclass
class Model:
    trainer: str
    folder: Path
    folds: list[Fold]  # the finished ones, cross-validation folds first

    @property
    def evaluated_folds(self) -> list[Fold]:
        """Cross-validation folds with a validation summary: what the tables average over."""
        return [fold for fold in self.folds if fold.is_cross_validation and fold.summary is not None]

    @cached_property
    def plans(self) -> dict:
        return read_json(self.folder / "plans.json")

    def networks(self, configuration_name: str, family: str) -> dict:
        """The network sizes this model was trained with (from its own copy of the plans)."""
        return configuration(self.plans, configuration_name)["families"][family]["networks"]

    def crossval_summaries(self) -> dict[str, dict]:
        """Pooled cross-validation summaries (`crossval_results_folds_0_1_2/summary.json`) by fold list."""
        summaries = {}
        for path in sorted(self.folder.glob("crossval_results_folds_*/summary.json")):
            folds = path.parent.name.removeprefix("crossval_results_folds_").replace("_", ", ")
            summaries[folds] = read_json(path)
        return summaries


@dataclass
class Results:
    dataset_id: int
    folder: Path  # $SDMC_results/Dataset{ID}_{Name}
    plans_name: str
    configuration: str
    models: dict[str, Model]  # trained (at least one finished fold), in report order
    not_trained: list[str]  # expected or present model folders without a finished fold

    @property
    def dataset_name(self) -> str:
        return self.folder.name

    @property
    def segmentation_models(self) -> list[Model]:
        """Every trained model but the mask autoencoder, whose summaries score reconstructions."""
        return [model for name, model in self.models.items() if name != MASK_AUTOENCODER_TRAINER]

    @cached_property
    def dataset(self) -> DatasetJson:
        return load_dataset_json(next(iter(self.models.values())).folder)

    @cached_property
    def plans(self) -> dict:
        return next(iter(self.models.values())).plans

    @cached_property
    def raw_folder(self) -> Path | None:
        return _dataset_folder(paths.raw_root(), self.dataset_id)

    @cached_property
    def preprocessed_folder(self) -> Path | None:
        return _dataset_folder(paths.preprocessed_root(), self.dataset_id)


def _dataset_folder(root: Path, dataset_id: int) -> Path | None:
    """The dataset's folder in `root`, or None: the report leaves out what needs a missing folder."""
    matches = folders_with_id(root, dataset_id)
    return matches[0] if len(matches) == 1 else None


def finished_folds(model_folder: Path) -> list[Fold]:
    folds = [Fold(child.name.removeprefix("fold_"), child) for child in model_folder.glob("fold_*")
             if (child / FINAL_CHECKPOINT).is_file()]
    return sorted(folds, key=lambda fold: (not fold.is_cross_validation, int(fold.name) if fold.name.isdigit() else 0))


def model_folders(dataset_folder: Path, plans_name: str, configuration_name: str) -> dict[str, Path]:
    """Trainer name -> model folder, for the folders of these plans and configuration."""
    suffix = f"__{plans_name}__{configuration_name}"
    return {child.name.removesuffix(suffix): child for child in sorted(dataset_folder.iterdir())
            if child.is_dir() and child.name.endswith(suffix) and "__" not in child.name.removesuffix(suffix)}


def report_order(trainers: set[str]) -> list[str]:
    return [name for name in EXPECTED_TRAINERS if name in trainers] + sorted(trainers - set(EXPECTED_TRAINERS))


def collect_results(dataset_id: int, plans_name: str, configuration_name: str) -> Results:
    """The trained models of a dataset; an error naming `sdmc_train` when there is none."""
    root = paths.results_root()
    how_to_train = f"train one with `sdmc_train {dataset_id} {configuration_name} 0 -tr UNetTrainer -p {plans_name}`"
    matches = folders_with_id(root, dataset_id)
    if len(matches) > 1:
        raise SDMCError(f"dataset id {dataset_id} is ambiguous in {root}: {', '.join(m.name for m in matches)}")
    if not matches:
        raise SDMCError(f"no results for dataset {dataset_id} in {root} (no Dataset{dataset_id:03d}_<Name> folder): "
                        f"{how_to_train}, or point SDMC_results to where the results are")
    folders = model_folders(matches[0], plans_name, configuration_name)
    models = {trainer: Model(trainer, folder, finished_folds(folder)) for trainer, folder in folders.items()}
    trained = {name: model for name, model in models.items() if model.folds}
    if not trained:
        raise SDMCError(f"no trained model with plans {plans_name} and configuration {configuration_name} in "
                        f"{matches[0]} (no fold_*/{FINAL_CHECKPOINT}): {how_to_train}")
    not_trained = [name for name in report_order(set(EXPECTED_TRAINERS) | set(models)) if name not in trained]
    return Results(dataset_id, matches[0], plans_name, configuration_name,
                   {name: trained[name] for name in report_order(set(trained))}, not_trained)
