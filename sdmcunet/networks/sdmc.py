"""SDMC-Seg (docs/design.md §5): a mask's latent reconstructed in one denoising step from the CT latent.

    mask -> one-hot -> [-1, 1] 3-colour image -> frozen mask VAE encoder -> z0 (x scale factor)
    CT   -> image encoder (VAE encoder + 1x1 conv 8->4)                  -> c
    training:  z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps,  eps_hat = UNet([z_t, c], t)
               z0_hat = sqrt(1/abar_t) z_t - sqrt(1/abar_t - 1) eps_hat
               loss = mean|eps_hat - eps| + mean|z0_hat - z0|
    inference: z_T ~ N(0, I), t = T - 1, one UNet call, z0_hat decoded, argmax over the class channels.

The published UNet predicts the noise ("epsilon"). The plans' `prediction_type` may instead
name diffusers' "v_prediction" (v = sqrt(abar) eps - sqrt(1 - abar) z0) or "sample" (z0): the
UNet output is then converted to the same eps_hat and z0_hat and the loss is unchanged. It
matters at t = T - 1, the one step inference takes: there z0_hat = 38.7 (z_T - eps_hat), so an
epsilon UNet must match the noise to within a fortieth of the mask latent's scale before the
mask shows. The published UNet learns that in 300 GPU epochs; a CPU plan's small UNet does not
in minutes. A v UNet outputs about -z0 there, and at no t is its error amplified.

The decoded class channels (about -1..1) are turned into probabilities by a softmax of their
values times COLOUR_SHARPNESS, so that several noise draws, folds or models can be averaged. A
softmax keeps the argmax over the decoded channels (docs/design.md §5) wherever they lie; clipping to
[0, 1] and normalising did not: a lesion decoded with every channel below -1, or with two
channels above 1, became a tie that argmax settled as non-stroke.
"""

import logging

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.resnet import ResnetBlock2D
from torch import nn
from torch.nn import functional as F

from sdmcunet.experiment_planning.plans import PREDICTION_TYPES
from sdmcunet.networks.latent_diffusion import (
    DOWNSAMPLING_FACTOR, LATENT_CHANNELS, build_autoencoder, build_denoiser, latent_multiple, padded_latent_size,
)

log = logging.getLogger("sdmcunet.networks")
# Sub-modules by attribute name, as state dicts, checkpoints and imports address their weights.
MASK_AUTOENCODER, IMAGE_ENCODER, DENOISER = "mask_autoencoder", "image_encoder", "denoiser"  # of SDMCSeg
AUTOENCODER = "autoencoder"  # of MaskAutoencoder
NUM_MASK_COLOURS = 3  # non-stroke, ischemic, hemorrhagic -> red, green, blue
# An exactly encoded class (+1 against -1) gets probability 0.995; the argmax ignores the value.
COLOUR_SHARPNESS = 3.0


def _schedule_config(diffusion: dict) -> dict:
    return {"num_train_timesteps": diffusion["num_train_timesteps"], "beta_schedule": diffusion["beta_schedule"],
            "beta_start": diffusion["beta_start"], "beta_end": diffusion["beta_end"],
            "prediction_type": diffusion["prediction_type"]}


def noise_schedule(diffusion: dict) -> DDPMScheduler:
    return DDPMScheduler(**_schedule_config(diffusion))


def ldm_ddim_scheduler(diffusion: dict) -> DDIMScheduler:
    """LDM's DDIM sampler (ldm/models/diffusion/ddim.py) as a diffusers scheduler.

    LDM steps through the timesteps 981, 961, ..., 1 for 50 steps (`steps_offset` 1), ends on
    alphas_cumprod[0] rather than 1 (`set_alpha_to_one` False) and never clips the predicted latent.
    """
    return DDIMScheduler(**_schedule_config(diffusion), clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         timestep_spacing="leading")


def mask_to_colour_image(label_map: torch.Tensor, num_classes: int = NUM_MASK_COLOURS) -> torch.Tensor:
    """(B, H, W) labels -> (B, 3, H, W) in [-1, 1]: channel c is +1 where the label is c."""
    return F.one_hot(label_map.long(), num_classes).permute(0, 3, 1, 2).float() * 2 - 1


def colour_image_to_probabilities(decoded: torch.Tensor) -> torch.Tensor:
    """Decoded (B, 3, H, W) colour image -> class probabilities with the same argmax, differentiable everywhere."""
    return torch.softmax(COLOUR_SHARPNESS * decoded, dim=1)


class ImageEncoder(nn.Module):
    """The VAE encoder architecture (dropout in its ResNet blocks) and a 1x1 projection 8 -> 4."""

    def __init__(self, autoencoder_sizes: dict, dropout: float):
        super().__init__()
        self.encoder = build_autoencoder(autoencoder_sizes).encoder
        for block in self.encoder.modules():
            if isinstance(block, ResnetBlock2D):
                block.dropout.p = dropout
        self.projection = nn.Conv2d(2 * LATENT_CHANNELS, LATENT_CHANNELS, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(image))


def draw_statistics(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_samples, B, classes, H, W) probabilities of noise draws -> their mean (B, classes, H, W) and the
    uncertainty (B, H, W): the largest per-class std over the draws (zero for one draw)."""
    if len(draws) == 1:
        return draws.mean(0), torch.zeros_like(draws[0, :, 0])
    return draws.mean(0), draws.std(0, unbiased=False).amax(1)


class SDMCSeg(nn.Module):
    """`networks`: the plans' sizes of `autoencoder`, `image_encoder` and `denoiser`; `diffusion`: the noise
    schedule and `prediction_type`; `latent_size`: the latent's side or (rows, columns), image size / 8."""

    def __init__(self, networks: dict, diffusion: dict, latent_size: int | tuple[int, int]):
        super().__init__()
        rows, columns = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
        self.mask_autoencoder = build_autoencoder(networks["autoencoder"])
        self.mask_autoencoder.requires_grad_(False)
        self.image_encoder = ImageEncoder(networks["autoencoder"], networks["image_encoder"]["dropout"])
        self.denoiser = build_denoiser(networks["denoiser"], rows if rows == columns else (rows, columns))
        self.latent_multiple = latent_multiple(networks["denoiser"])
        if rows % self.latent_multiple or columns % self.latent_multiple:
            padded = [padded_latent_size(networks["denoiser"], side) for side in (rows, columns)]
            log.warning("latent size %s: the denoiser downsamples to 1/%d, so its latents are zero-padded to %s "
                        "(image sides that are multiples of %d need no padding)", (rows, columns),
                        self.latent_multiple, tuple(padded), DOWNSAMPLING_FACTOR * self.latent_multiple)
        self.register_buffer("alphas_cumprod", noise_schedule(diffusion).alphas_cumprod.float())
        if diffusion["prediction_type"] not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {diffusion['prediction_type']!r} is not one of {', '.join(PREDICTION_TYPES)}")
        self.prediction_type = diffusion["prediction_type"]
        # 1/std of the first training batch's mask latents; 0 until that batch is seen
        self.register_buffer("scale_factor", torch.zeros(()))

    @property
    def last_timestep(self) -> int:
        return len(self.alphas_cumprod) - 1

    def train(self, mode: bool = True) -> "SDMCSeg":
        super().train(mode)
        self.mask_autoencoder.eval()  # frozen: its dropout/normalisation never switch to training
        return self

    def set_image_encoder_trainable(self, trainable: bool) -> None:
        """Frozen: only the 1x1 projection learns (the reference code left it random, a mistake)."""
        self.image_encoder.encoder.requires_grad_(trainable)

    @torch.no_grad()
    def encode_mask(self, label_map: torch.Tensor) -> torch.Tensor:
        """Unscaled mask latent: posterior.sample() of the frozen mask VAE."""
        return self.mask_autoencoder.encode(mask_to_colour_image(label_map)).latent_dist.sample()

    def condition(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) CT in [0, 1] -> image latent, the PNG channel as the published model reads it."""
        return self.image_encoder((image[:, :1] * 2 - 1).repeat(1, 3, 1, 1))

    def _coefficients(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(abar_t) and sqrt(1 - abar_t), shaped to scale (B, C, H, W) latents."""
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return torch.sqrt(alpha_bar), torch.sqrt(1 - alpha_bar)

    def estimates(self, noisy: torch.Tensor, output: torch.Tensor,
                  timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_hat, z0_hat) from the UNet `output` for the noisy latent z_t."""
        signal, noise = self._coefficients(timesteps)
        if self.prediction_type == "epsilon":
            return output, (noisy - noise * output) / signal
        if self.prediction_type == "sample":
            return (noisy - signal * output) / noise, output
        return noise * noisy + signal * output, signal * noisy - noise * output  # v_prediction

    def forward(self, image: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        """The training loss (forward, so that DistributedDataParallel synchronises its gradients)."""
        return self.loss(image, label_map)

    def loss(self, image: torch.Tensor, label_map: torch.Tensor, denoiser: nn.Module | None = None) -> torch.Tensor:
        """The single-step training loss of docs/design.md §5 for one batch."""
        mask_latent = self.encode_mask(label_map) * self.scale_factor
        image_latent = self.condition(image)
        timesteps = torch.randint(0, len(self.alphas_cumprod), (image.shape[0],), device=image.device)
        noise = torch.randn_like(mask_latent)
        signal, noise_scale = self._coefficients(timesteps)
        noisy = signal * mask_latent + noise_scale * noise
        output = self.denoise(noisy, image_latent, timesteps, denoiser)
        predicted_noise, predicted_latent = self.estimates(noisy, output, timesteps)
        return F.l1_loss(predicted_noise, noise) + F.l1_loss(predicted_latent, mask_latent)

    @torch.no_grad()
    def segment(self, image: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None,
                denoiser: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities averaged over `n_samples` noise draws, and their per-pixel std (uncertainty)."""
        return draw_statistics(self.sample(image, n_samples, generator, denoiser))

    @torch.no_grad()
    def sample(self, image: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None,
               denoiser: nn.Module | None = None) -> torch.Tensor:
        """The class probabilities of each of `n_samples` noise draws, (n_samples, B, classes, H, W)."""
        image_latent = self.condition(image)
        timesteps = torch.full((image.shape[0],), self.last_timestep, device=image.device, dtype=torch.long)
        draws = []
        for _ in range(n_samples):
            noise = torch.randn(image_latent.shape, generator=generator, device=image.device, dtype=image_latent.dtype)
            output = self.denoise(noise, image_latent, timesteps, denoiser)
            latent = self.estimates(noise, output, timesteps)[1] / self.scale_factor
            draws.append(colour_image_to_probabilities(self.mask_autoencoder.decode(latent).sample))
        return torch.stack(draws)

    @torch.no_grad()
    def segment_multistep(self, image: torch.Tensor, num_steps: int, diffusion: dict, eta: float = 1.0,
                          generator: torch.Generator | None = None, denoiser: nn.Module | None = None) -> torch.Tensor:
        """Class probabilities by LDM's DDIM sampling in `num_steps` steps (the multi-step baseline of one step).

        `eta` 1 (fresh noise at every step, DDPM-like) is what the reference code evaluates with; 0 is
        deterministic DDIM."""
        scheduler = ldm_ddim_scheduler(diffusion)
        scheduler.set_timesteps(num_steps, device=image.device)
        image_latent = self.condition(image)
        latent = torch.randn(image_latent.shape, generator=generator, device=image.device, dtype=image_latent.dtype)
        for timestep in scheduler.timesteps:
            timesteps = torch.full((image.shape[0],), int(timestep), device=image.device, dtype=torch.long)
            output = self.denoise(latent, image_latent, timesteps, denoiser)
            latent = scheduler.step(output, timestep, latent, eta=eta, generator=generator).prev_sample
        return colour_image_to_probabilities(self.mask_autoencoder.decode(latent / self.scale_factor).sample)

    def denoise(self, noisy: torch.Tensor, image_latent: torch.Tensor, timesteps: torch.Tensor,
                denoiser: nn.Module | None = None) -> torch.Tensor:
        """The UNet output for [z_t, c] at `timesteps` (`denoiser`: e.g. the EMA copy; default the trained one).

        A latent side the UNet's downsamplings do not divide is zero-padded around, and the output
        cropped back: the network computes exactly LDM's function wherever no padding is needed.
        """
        inputs = torch.cat([noisy, image_latent], dim=1)
        height, width = inputs.shape[-2:]
        pad_rows, pad_columns = -height % self.latent_multiple, -width % self.latent_multiple
        top, left = pad_rows // 2, pad_columns // 2
        if pad_rows or pad_columns:
            inputs = F.pad(inputs, (left, pad_columns - left, top, pad_rows - top))
        return (denoiser or self.denoiser)(inputs, timesteps).sample[..., top:top + height, left:left + width]


class MaskAutoencoder(nn.Module):
    """The kl-f8 VAE seen as an autoencoder of colour-encoded masks (for its fine-tuning)."""

    def __init__(self, autoencoder_sizes: dict):
        super().__init__()
        self.autoencoder = build_autoencoder(autoencoder_sizes)

    def forward(self, label_map: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded colour image and the mean KL divergence of the posterior from N(0, I)."""
        posterior = self.autoencoder.encode(mask_to_colour_image(label_map)).latent_dist
        latent = posterior.sample() if sample else posterior.mode()
        return self.autoencoder.decode(latent).sample, posterior.kl().mean()
