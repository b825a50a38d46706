"""SDMC-Seg trainers (the proposed model and its ablations) and the mask autoencoder fine-tuning.

| trainer                     | mask autoencoder            | image encoder                      |
|-----------------------------|-----------------------------|------------------------------------|
| SDMCFinetunedTrainer        | fine-tuned (MaskAutoencoder) | trainable (proposed)               |
| SDMCPretrainedTrainer       | pretrained SD VAE            | trainable                          |
| SDMCFinetunedFrozenTrainer  | fine-tuned                   | frozen, its 1x1 projection trained |

The reference code of the frozen variant leaves the new 1x1 projection at its random
initialisation; here it is trained, since a random projection of a frozen encoder cannot carry
the image to the denoiser.
"""

import logging
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sdmcunet.experiment_planning.plans import SDMC_FAMILY
from sdmcunet.experiment_planning.plans_manager import ConfigurationManager
from sdmcunet.networks.sdmc import DENOISER, MASK_AUTOENCODER, SDMCSeg
from sdmcunet.networks.segmenters import SDMCSegmenter, Segmenter
from sdmcunet.results.checkpoints import prefixed, sub_state
from sdmcunet.training import mask_autoencoder_source
from sdmcunet.training.distributed import all_reduce_sum
from sdmcunet.training.trainers.base import Trainer

log = logging.getLogger("sdmcunet.training")
EMA = "ema"  # the checkpoints' extra state: AveragedModel's state dict of the denoiser ("module." + its names)


class SDMCTrainer(Trainer):
    family = SDMC_FAMILY
    fine_tuned_mask_autoencoder = True
    image_encoder_trainable = True

    @classmethod
    def build_network_architecture(cls, configuration: ConfigurationManager) -> nn.Module:
        family = configuration.family(cls.family)
        return SDMCSeg(family.networks, family.diffusion, configuration.latent_size)

    @classmethod
    def inference_weights(cls, state: dict, folder: Path) -> dict[str, torch.Tensor]:
        """The network with the EMA of its denoiser, which validation and inference predict with."""
        network = super().inference_weights(state, folder)
        ema = sub_state(state["extra"][EMA], "module")
        return {key: value for key, value in network.items() if not key.startswith(f"{DENOISER}.")} | prefixed(ema, DENOISER)

    @classmethod
    def segmenter(cls, network: nn.Module) -> Segmenter:
        return SDMCSegmenter(network)

    def build_network(self) -> nn.Module:
        model = super().build_network()
        model.set_image_encoder_trainable(self.image_encoder_trainable)
        return model

    def load_initial_weights(self, network: nn.Module) -> None:
        mask_autoencoder_source.raise_if_weights_missing(self, self.fine_tuned_mask_autoencoder)
        mask_autoencoder_source.load_pretrained_parts(network, self.family_settings.networks)
        if self.fine_tuned_mask_autoencoder:
            source = mask_autoencoder_source.load_fine_tuned(network.mask_autoencoder, self)
            log.info("mask autoencoder: fine-tuned, from %s", source)

    def initialize(self, initial_weights: bool = True) -> None:
        super().initialize(initial_weights)
        decay = self.schedule.ema_decay
        self.ema = AveragedModel(self.module.denoiser, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.ema.eval()  # only ever evaluated (validation, checkpoints): no dropout in its forward passes

    def started_from_pretrained(self) -> bool:
        networks = self.family_settings.networks
        return any(networks[part].get("pretrained") for part in ("autoencoder", "denoiser"))

    def compute_loss(self, batch: dict) -> torch.Tensor:
        labels = batch["seg"][:, 0]
        if self.module.scale_factor == 0:
            self._set_scale_factor(labels)
        if not self.network.training:  # validation loss with the EMA denoiser, as used for inference
            return self.module.loss(batch["data"], labels, denoiser=self.ema.module)
        return self.network(batch["data"], labels)

    @torch.no_grad()
    def _set_scale_factor(self, labels: torch.Tensor) -> None:
        """s = 1/std of the first training batch's mask latents (averaged over ranks), stored with the model."""
        latents = self.module.encode_mask(labels)
        moments = torch.stack([latents.sum(), (latents ** 2).sum(), torch.tensor(float(latents.numel()), device=latents.device)])
        total, squares, count = all_reduce_sum(moments.double(), self.distributed)
        std = torch.sqrt(squares / count - (total / count) ** 2)
        self.module.scale_factor.fill_(float(1 / std))
        log.info("latent scale factor set to %.5f from the first training batch", float(self.module.scale_factor))

    def after_step(self) -> None:
        self.ema.update_parameters(self.module.denoiser)

    def validation_segmenter(self) -> Segmenter:
        """One denoising step from t = T-1 per noise draw, with the EMA denoiser."""
        return SDMCSegmenter(self.module, denoiser=self.ema.module)

    def extra_state(self) -> dict:
        return {EMA: self.ema.state_dict()}

    def frozen_parts(self) -> dict[str, nn.Module]:
        return {MASK_AUTOENCODER: self.module.mask_autoencoder}

    def load_extra_state(self, state: dict) -> None:
        if EMA in state:
            self.ema.load_state_dict(state[EMA])


class SDMCFinetunedTrainer(SDMCTrainer):
    """The proposed model: fine-tuned mask autoencoder, trainable image encoder."""


class SDMCPretrainedTrainer(SDMCTrainer):
    fine_tuned_mask_autoencoder = False


class SDMCFinetunedFrozenTrainer(SDMCTrainer):
    image_encoder_trainable = False
