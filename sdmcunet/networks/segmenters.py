"""What inference (and a training's validation) asks of a network: class probabilities for a batch.

    probabilities, uncertainty = segmenter(images, n_samples, seed)
    draws = segmenter.draws(images, n_samples, seed)

`images` are (B, C, H, W) network inputs; `probabilities` (B, classes, H, W); `uncertainty` the
per-pixel spread over `n_samples` noise draws of a stochastic model (B, H, W), or None; `draws`
the probabilities of each draw (n_samples, B, classes, H, W), one for a deterministic network.
"""

from typing import Protocol

import torch
from torch import nn

from sdmcunet.networks.sdmc import SDMCSeg, draw_statistics

DEFAULT_NOISE_SEED = 0  # predictions and validations are reproducible


class Segmenter(Protocol):
    def __call__(self, images: torch.Tensor, n_samples: int = 1,
                 seed: int = DEFAULT_NOISE_SEED) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def draws(self, images: torch.Tensor, n_samples: int = 1, seed: int = DEFAULT_NOISE_SEED) -> torch.Tensor: ...


def summarise_draws(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What a segmenter returns for its `draws`: their mean, and their spread when there are several."""
    probabilities, uncertainty = draw_statistics(draws)
    return probabilities, uncertainty if len(draws) > 1 else None


class SoftmaxSegmenter:
    """A network whose output is class logits: deterministic, `n_samples` and `seed` play no part."""

    def __init__(self, network: nn.Module):
        self.network = network

    def __call__(self, images: torch.Tensor, n_samples: int = 1,
                 seed: int = DEFAULT_NOISE_SEED) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.softmax(self.network(images), dim=1), None

    def draws(self, images: torch.Tensor, n_samples: int = 1, seed: int = DEFAULT_NOISE_SEED) -> torch.Tensor:
        return self(images)[0][None]


class SDMCSegmenter:
    """SDMC-Seg's one denoising step from t = T-1 per noise draw (`denoiser`: e.g. a training's EMA copy;
    default the model's own, which inference loads with the EMA weights)."""

    def __init__(self, model: SDMCSeg, denoiser: nn.Module | None = None):
        self.model, self.denoiser = model, denoiser

    def __call__(self, images: torch.Tensor, n_samples: int = 1,
                 seed: int = DEFAULT_NOISE_SEED) -> tuple[torch.Tensor, torch.Tensor | None]:
        return summarise_draws(self.draws(images, n_samples, seed))

    def draws(self, images: torch.Tensor, n_samples: int = 1, seed: int = DEFAULT_NOISE_SEED) -> torch.Tensor:
        generator = torch.Generator(images.device).manual_seed(seed)
        return self.model.sample(images, n_samples, generator, denoiser=self.denoiser)
