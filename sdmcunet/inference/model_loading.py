"""A trained model folder -> one ready trainer per fold, for inference.

A model folder is self-contained: `plans.json`, `dataset.json` and `fold_{f}/checkpoint_*.pth`.
The trainer class and configuration come from the checkpoints, so a folder copied elsewhere
(`sdmc_predict -m FOLDER`) works without the dataset's raw or preprocessed data.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from sdmcunet import paths
from sdmcunet.experiment_planning.plans import load_plans
from sdmcunet.raw_dataset import DatasetJson, folders_with_id, load_dataset_json
from sdmcunet.training.checkpoints import load_checkpoint
from sdmcunet.training.model_folder import fold_folder, model_folder
from sdmcunet.training.trainers import TRAINERS
from sdmcunet.training.trainers.base import Trainer
from sdmcunet.utils.errors import SDMCError

log = logging.getLogger("sdmcunet.inference")


@dataclass
class LoadedModel:
    folder: Path
    plans: dict
    dataset: DatasetJson
    configuration: dict
    trainer_name: str
    folds: list[Trainer]  # one per fold, network in eval mode


def find_model_folder(dataset_id: int, trainer_name: str, plans_name: str, configuration_name: str) -> Path:
    datasets = folders_with_id(paths.results_root(), dataset_id)
    if len(datasets) != 1:
        raise SDMCError(f"{paths.results_root()}: {'no' if not datasets else 'more than one'} results folder "
                        f"Dataset{dataset_id:03d}_<Name>; train a model with `sdmc_train {dataset_id} ...` "
                        f"or point SDMC_results to where the models are")
    # a trainer given as package.module:ClassName has its class name in the folder name
    folder = model_folder(datasets[0].name, trainer_name.split(":")[-1], plans_name, configuration_name)
    if not folder.is_dir():
        raise SDMCError(f"{folder}: no such model; train it with `sdmc_train {dataset_id} {configuration_name} 0 "
                        f"-tr {trainer_name} -p {plans_name}` (and the other folds)")
    return folder


def available_folds(folder: Path, checkpoint_name: str) -> list[str]:
    return sorted(path.parent.name.removeprefix("fold_") for path in folder.glob(f"fold_*/{checkpoint_name}"))


def load_model(folder: Path, folds: list[str] | None, checkpoint_name: str, device: torch.device,
               trainer_name: str | None = None) -> LoadedModel:
    """Every requested fold (default: all with the checkpoint) of the model in `folder`.

    The trainer class is the one named in the checkpoints, looked up as `trainer_name` if given
    (for a trainer given as package.module:ClassName)."""
    plans, dataset = load_plans(folder / "plans.json"), load_dataset_json(folder)
    folds = folds or available_folds(folder, checkpoint_name)
    if not folds:
        raise SDMCError(f"{folder}: no fold has a {checkpoint_name}; is training finished?")
    checkpoints = [fold_folder(folder, fold) / checkpoint_name for fold in folds]
    if missing := [str(path) for path in checkpoints if not path.is_file()]:
        raise SDMCError(f"{folder}: fold checkpoint(s) missing: {', '.join(missing)}; train those folds with "
                        f"sdmc_train (or choose folds with -f {' '.join(available_folds(folder, checkpoint_name))})")
    trainers = [_fold_trainer(plans, fold, path, device, trainer_name) for fold, path in zip(folds, checkpoints)]
    names = {type(trainer).__name__ for trainer in trainers}
    if len(names) > 1:
        raise SDMCError(f"{folder}: its folds were trained by different trainers: {sorted(names)}")
    log.info("%s: folds %s loaded", folder.name, ", ".join(folds))
    first = trainers[0]
    return LoadedModel(folder, plans, dataset, first.config, type(first).__name__, trainers)


def _fold_trainer(plans: dict, fold: str, checkpoint: Path, device: torch.device, trainer_name: str | None) -> Trainer:
    state = load_checkpoint(checkpoint)
    written_by = state.get("trainer")
    if trainer_name is not None:  # the user's choice, which may be an import path
        trainer_class = TRAINERS.get(trainer_name)
    elif not isinstance(written_by, str):
        raise SDMCError(f"{checkpoint}: names no trainer")
    else:  # a name read from a file is looked up, never imported
        try:
            trainer_class = TRAINERS.get_registered(written_by)
        except SDMCError:
            raise SDMCError(f"{checkpoint}: written by {written_by!r}, which is not a registered trainer; if it is "
                            f"yours, give it with -tr package.module:ClassName") from None
    if trainer_class.__name__ != written_by:
        raise SDMCError(f"{checkpoint}: written by {written_by}, not by {trainer_class.__name__}")
    if trainer_class.family == "mask_autoencoder":
        raise SDMCError(f"{checkpoint}: {state['trainer']} reconstructs masks; it does not segment images")
    # the model folder stands in for the preprocessed folder: inference reads no training data
    trainer = trainer_class(plans, state["configuration"], int(fold) if fold.isdigit() else fold,
                            checkpoint.parent.parent, str(device))
    trainer.initialize(initial_weights=False)
    trainer.load_state(state, checkpoint.parent, weights_only=True)
    trainer.network.eval()
    return trainer
