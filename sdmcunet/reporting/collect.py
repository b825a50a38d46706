"""What a dataset's results folder holds for the report: its trained models (`TrainedModel`), in
report order, and the raw and preprocessed folders where they are at hand.
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sdmcunet import paths
from sdmcunet.experiment_planning.plans_manager import PlansManager
from sdmcunet.raw_dataset import DatasetJson, folders_with_id, load_dataset_json
from sdmcunet.reporting.published import FIVE_FOLD, TABLE3, TABLE4
from sdmcunet.results.layout import FINAL_CHECKPOINT
from sdmcunet.results.trained_model import TrainedModel, models_in
from sdmcunet.training.trainers import MASK_AUTOENCODER_TRAINER
from sdmcunet.utils.errors import SDMCError

# The models of the published comparison, in the order the report lists them; other trained
# models (users' own trainers) follow in alphabetical order.
EXPECTED_TRAINERS = (*dict.fromkeys(result.trainer for result in (*TABLE3, *FIVE_FOLD, *TABLE4)),
                     MASK_AUTOENCODER_TRAINER)


@dataclass
class Results:
    dataset_id: int
    folder: Path  # $SDMC_results/Dataset{ID}_{Name}
    plans_name: str
    configuration: str
    models: dict[str, TrainedModel]  # trained (at least one finished fold), in report order
    not_trained: list[str]  # expected or present model folders without a finished fold

    @property
    def dataset_name(self) -> str:
        return self.folder.name

    @property
    def segmentation_models(self) -> list[TrainedModel]:
        """Every trained model but the mask autoencoder, whose summaries score reconstructions."""
        return [model for name, model in self.models.items() if name != MASK_AUTOENCODER_TRAINER]

    @cached_property
    def dataset(self) -> DatasetJson:
        return load_dataset_json(next(iter(self.models.values())).folder)

    @cached_property
    def plans(self) -> PlansManager:
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
    models = {model.trainer: model for model in models_in(matches[0], plans_name, configuration_name)}
    trained = {name: model for name, model in models.items() if model.finished_folds()}
    if not trained:
        raise SDMCError(f"no trained model with plans {plans_name} and configuration {configuration_name} in "
                        f"{matches[0]} (no fold_*/{FINAL_CHECKPOINT}): {how_to_train}")
    not_trained = [name for name in report_order(set(EXPECTED_TRAINERS) | set(models)) if name not in trained]
    return Results(dataset_id, matches[0], plans_name, configuration_name,
                   {name: trained[name] for name in report_order(set(trained))}, not_trained)
