"""A trained model folder -> one ready network per fold, for inference.

A model folder is self-contained (`plans.json`, `dataset.json`, `fold_{f}/checkpoint_*.pth`), so a
folder copied elsewhere (`sdmc_predict -m FOLDER`) works without the dataset's raw or preprocessed
data. As nnU-Net's predictor does, each fold's network is built from the plans by the trainer
*class* (`build_network_architecture`), loaded with the checkpoint's inference weights (the EMA
denoiser for SDMC-Seg) and wrapped in the class's `segmenter`: no trainer, optimiser, learning-rate
schedule, gradient scaler or process group is made.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from sdmcunet.experiment_planning.plans import MASK_AUTOENCODER_FAMILY
from sdmcunet.experiment_planning.plans_manager import ConfigurationManager, FamilySettings, PlansManager
from sdmcunet.networks.segmenters import Segmenter
from sdmcunet.raw_dataset import DatasetJson
from sdmcunet.results.checkpoints import load_checkpoint
from sdmcunet.results.trained_model import TrainedModel
from sdmcunet.training.trainers import TRAINERS, Trainer
from sdmcunet.utils.errors import SDMCError

log = logging.getLogger("sdmcunet.inference")


@dataclass
class FoldNetwork:
    fold: str
    segmenter: Segmenter  # its network in eval mode, on the model's device


@dataclass
class LoadedModel:
    model: TrainedModel
    configuration: ConfigurationManager
    trainer_name: str
    family: FamilySettings  # of the trainer's family: the batch size to predict with
    device: torch.device
    folds: list[FoldNetwork]

    @property
    def folder(self) -> Path:
        return self.model.folder

    @property
    def plans(self) -> PlansManager:
        return self.configuration.plans

    @property
    def dataset(self) -> DatasetJson:
        return self.model.dataset


def load_model(folder: Path, folds: list[str] | None, checkpoint_name: str, device: torch.device,
               trainer_name: str | None = None) -> LoadedModel:
    """Every requested fold (default: all with the checkpoint) of the model in `folder`.

    The trainer class is the one named in the checkpoints, looked up as `trainer_name` if given
    (for a trainer given as package.module:ClassName)."""
    model = TrainedModel(folder)
    plans = model.plans
    available = [fold.name for fold in model.finished_folds(checkpoint_name)]
    folds = folds or available
    if not folds:
        raise SDMCError(f"{folder}: no fold has a {checkpoint_name}; is training finished?")
    checkpoints = [model.fold(fold).folder / checkpoint_name for fold in folds]
    if missing := [str(path) for path in checkpoints if not path.is_file()]:
        raise SDMCError(f"{folder}: fold checkpoint(s) missing: {', '.join(missing)}; train those folds with "
                        f"sdmc_train (or choose folds with -f {' '.join(available)})")
    states = [load_checkpoint(path) for path in checkpoints]
    trainer_classes = {_trainer_class(state, path, trainer_name) for state, path in zip(states, checkpoints)}
    if len(trainer_classes) > 1:
        raise SDMCError(f"{folder}: its folds were trained by different trainers: "
                        f"{sorted(cls.__name__ for cls in trainer_classes)}")
    trainer_class = trainer_classes.pop()
    configurations = {state.get("configuration") for state in states}
    if len(configurations) > 1 or not all(isinstance(name, str) for name in configurations):
        raise SDMCError(f"{folder}: its folds name different or no configurations: {sorted(map(str, configurations))}")
    configuration = trainer_class.configuration_of(plans, configurations.pop())
    networks = [FoldNetwork(fold, _segmenter(trainer_class, configuration, state, path, device))
                for fold, state, path in zip(folds, states, checkpoints)]
    log.info("%s: folds %s loaded", folder.name, ", ".join(folds))
    return LoadedModel(model, configuration, trainer_class.__name__, configuration.family(trainer_class.family),
                       device, networks)


def _trainer_class(state: dict, checkpoint: Path, trainer_name: str | None) -> type[Trainer]:
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
    if trainer_class.family == MASK_AUTOENCODER_FAMILY:
        raise SDMCError(f"{checkpoint}: {written_by} reconstructs masks; it does not segment images")
    return trainer_class


def _segmenter(trainer_class: type[Trainer], configuration: ConfigurationManager, state: dict, checkpoint: Path,
               device: torch.device) -> Segmenter:
    """The fold's network as the plans build it, with the checkpoint's inference weights, ready to predict."""
    network = trainer_class.build_network_architecture(configuration)
    network.load_state_dict(trainer_class.inference_weights(state, checkpoint.parent))
    network = network.to(device).eval()
    if device.type == "cuda":
        network = network.to(memory_format=torch.channels_last)
    return trainer_class.segmenter(network)
