"""The four baselines of the published comparison (DESIGN §6): MONAI networks, Dice + CE."""

from pathlib import Path

import torch
from torch import nn

from sdmcunet.networks.baselines import build_baseline, load_encoder_weights
from sdmcunet.training.trainers.base import Trainer


class BaselineTrainer(Trainer):
    family = "baseline"

    def build_network(self) -> nn.Module:
        from monai.losses import DiceCELoss

        # batch=True: Dice over the whole batch, so slices without a lesion do not punish the Dice term
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        sizes = self.settings["networks"][self.network_name]
        return build_baseline(self.network_name, sizes, self.in_channels, self.num_classes)

    def load_initial_weights(self, network: nn.Module) -> None:
        encoder_weights = self.settings["networks"][self.network_name].get("encoder_weights")
        if encoder_weights:
            load_encoder_weights(network.encoder, Path(encoder_weights))

    def compute_loss(self, batch: dict) -> torch.Tensor:
        return self.loss(self.network(batch["data"]), batch["seg"])

    def validate_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network(batch["data"])
        return self.loss(logits, batch["seg"]), logits.argmax(1)

    def started_from_pretrained(self) -> bool:
        return bool(self.settings["networks"][self.network_name].get("encoder_weights"))


class UNetTrainer(BaselineTrainer):
    network_name = "UNet"


class ResUNet34Trainer(BaselineTrainer):
    network_name = "ResUNet34"


class SegResNetTrainer(BaselineTrainer):
    network_name = "SegResNet"


class SwinUNETRTrainer(BaselineTrainer):
    network_name = "SwinUNETR"
