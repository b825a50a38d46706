"""The four baselines of the published comparison (docs/design.md §6): MONAI networks, trained with the plans'
`loss` (Dice + cross-entropy as published)."""

from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from sdmcunet.experiment_planning.plans import BASELINE_FAMILY
from sdmcunet.experiment_planning.plans_manager import ConfigurationManager
from sdmcunet.networks.baselines import build_baseline, load_encoder_weights
from sdmcunet.training.trainers.base import Trainer

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels (B, 1, H, W)) -> loss


def segmentation_loss(name: str) -> Loss:
    """The plans' `loss` (plans.BASELINE_LOSSES): dice_ce, dice or ce."""
    from monai.losses import DiceCELoss, DiceLoss

    # batch=True: Dice over the whole batch, so slices without a lesion do not punish the Dice term
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    if name == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True, batch=True)
    return lambda logits, labels: F.cross_entropy(logits, labels[:, 0].long())


class BaselineTrainer(Trainer):
    family = BASELINE_FAMILY

    @classmethod
    def build_network_architecture(cls, configuration: ConfigurationManager) -> nn.Module:
        sizes = configuration.family(cls.family).networks[cls.network_name]
        return build_baseline(cls.network_name, sizes, configuration.num_input_channels, configuration.plans.num_classes)

    def initialize(self, initial_weights: bool = True) -> None:
        super().initialize(initial_weights)
        self.loss = segmentation_loss(self.family_settings.loss)

    def load_initial_weights(self, network: nn.Module) -> None:
        encoder_weights = self.family_settings.networks[self.network_name].get("encoder_weights")
        if encoder_weights:
            load_encoder_weights(network.encoder, Path(encoder_weights))

    def compute_loss(self, batch: dict) -> torch.Tensor:
        return self.loss(self.network(batch["data"]), batch["seg"])

    def validate_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network(batch["data"])
        return self.loss(logits, batch["seg"]), logits.argmax(1)

    def started_from_pretrained(self) -> bool:
        return bool(self.family_settings.networks[self.network_name].get("encoder_weights"))


class UNetTrainer(BaselineTrainer):
    network_name = "UNet"


class ResUNet34Trainer(BaselineTrainer):
    network_name = "ResUNet34"


class SegResNetTrainer(BaselineTrainer):
    network_name = "SegResNet"


class SwinUNETRTrainer(BaselineTrainer):
    network_name = "SwinUNETR"
