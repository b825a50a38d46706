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

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sdmcunet.networks.sdmc import SDMCSeg
from sdmcunet.training import mask_autoencoder_source
from sdmcunet.training.distributed import all_reduce_sum
from sdmcunet.training.trainers.base import Trainer

log = logging.getLogger("sdmcunet.training")
VALIDATION_NOISE_SEED = 0  # validation predictions are reproducible


class SDMCTrainer(Trainer):
    family = "sdmc"
    fine_tuned_mask_autoencoder = True
    image_encoder_trainable = True

    def build_network(self) -> nn.Module:
        settings = self.settings
        model = SDMCSeg(settings["networks"], settings["diffusion"], self.config["latent_size"][0])
        model.set_image_encoder_trainable(self.image_encoder_trainable)
        return model

    def load_initial_weights(self, network: nn.Module) -> None:
        mask_autoencoder_source.raise_if_weights_missing(self, self.fine_tuned_mask_autoencoder)
        mask_autoencoder_source.load_pretrained_parts(network, self.settings["networks"])
        if self.fine_tuned_mask_autoencoder:
            source = mask_autoencoder_source.load_fine_tuned(network.mask_autoencoder, self)
            log.info("mask autoencoder: fine-tuned, from %s", source)

    def initialize(self, initial_weights: bool = True) -> None:
        super().initialize(initial_weights)
        decay = self.schedule["ema_decay"]
        self.ema = AveragedModel(self.module.denoiser, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def started_from_pretrained(self) -> bool:
        networks = self.settings["networks"]
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

    def predict_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return self.sample_probabilities(images)[0]

    def sample_probabilities(self, images: torch.Tensor, n_samples: int = 1,
                             seed: int = VALIDATION_NOISE_SEED) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One denoising step from t = T-1 per noise draw, with the EMA denoiser."""
        generator = torch.Generator(images.device).manual_seed(seed)
        probabilities, uncertainty = self.module.segment(images, n_samples, generator, denoiser=self.ema.module)
        return probabilities, uncertainty if n_samples > 1 else None

    def extra_state(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def frozen_parts(self) -> dict[str, nn.Module]:
        return {"mask_autoencoder": self.module.mask_autoencoder}

    def load_extra_state(self, state: dict) -> None:
        if "ema" in state:
            self.ema.load_state_dict(state["ema"])


class SDMCFinetunedTrainer(SDMCTrainer):
    """The proposed model: fine-tuned mask autoencoder, trainable image encoder."""


class SDMCPretrainedTrainer(SDMCTrainer):
    fine_tuned_mask_autoencoder = False


class SDMCFinetunedFrozenTrainer(SDMCTrainer):
    image_encoder_trainable = False
