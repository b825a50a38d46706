"""Network sizes and schedules the planners start from.

GPU presets are the published settings (docs/design.md §5-6); CPU presets are small enough to train to
a useful result in minutes on 2 cores. Planners copy them into the plans, where users edit them.
"""

import copy
import functools
import json

import torch

from sdmcunet.experiment_planning.memory import (
    FROZEN_BYTES_PER_PARAMETER, TRAINABLE_BYTES_PER_PARAMETER, MemoryModel, activation_bytes, on_meta,
    parameter_count,
)
from sdmcunet.experiment_planning.plans import BASELINE_FAMILY, MASK_AUTOENCODER_FAMILY, NETWORK_DIVISOR, SDMC_FAMILY
from sdmcunet.labels import LABELS
from sdmcunet.networks.baselines import build_baseline
from sdmcunet.networks.latent_diffusion import (
    DOWNSAMPLING_FACTOR, LATENT_CHANNELS, build_autoencoder, build_denoiser, latent_multiple, padded_latent_size,
)

PUBLISHED_IMAGE_SIZE = 256
CPU_IMAGE_SIZE = 128
SMALLEST_IMAGE_SIZE = 64

# SDMC network sizes by name: "sd" is the published model (Stable Diffusion first stage, LDM
# UNet of about 295M parameters), "small" fits smaller GPUs, "tiny" trains on a CPU.
# attention_resolutions are LDM's: downsampling rates of the latent (1 = its full size).
SDMC_SIZES = {
    "sd": {
        "autoencoder": {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "pretrained": "sd-kl-f8"},
        "image_encoder": {"dropout": 0.2},
        "denoiser": {"model_channels": 192, "channel_mult": [1, 2, 2, 4, 4], "num_res_blocks": 2,
                     "attention_resolutions": [1, 2, 4, 8], "num_heads": 8, "dropout": 0.2,
                     "pretrained": "lsun_churches256"},
    },
    "small": {
        "autoencoder": {"ch": 64, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 1, "pretrained": None},
        "image_encoder": {"dropout": 0.1},
        "denoiser": {"model_channels": 96, "channel_mult": [1, 2, 2, 4], "num_res_blocks": 2,
                     "attention_resolutions": [4, 8], "num_heads": 4, "dropout": 0.1, "pretrained": None},
    },
    "tiny": {
        "autoencoder": {"ch": 16, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1, "pretrained": None},
        "image_encoder": {"dropout": 0.0},
        "denoiser": {"model_channels": 32, "channel_mult": [1, 2, 4], "num_res_blocks": 1,
                     "attention_resolutions": [4], "num_heads": 4, "dropout": 0.0, "pretrained": None},
    },
}

GPU_SDMC_SIZE_ORDER = ("sd", "small")

_DIFFUSION = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.0015,
              "beta_end": 0.0155, "prediction_type": "epsilon"}

_GPU = {
    BASELINE_FAMILY: {
        "batch_size": 16,
        "loss": "dice_ce",
        "selection_metric": "IoU",
        "schedule": {"epochs": 300, "iterations_per_epoch": 250, "val_iterations": 50, "optimizer": "adam",
                     "learning_rate": 1.6e-4, "weight_decay": 0.0, "warmup_iterations": 0, "lr_decay": "constant",
                     "grad_clip": 12.0},
        "networks": {
            "UNet": {"features": [32, 32, 64, 128, 256, 32]},
            "ResUNet34": {"decoder_channels": [256, 128, 64, 32, 16], "encoder_weights": None},
            "SegResNet": {"init_filters": 24},
            "SwinUNETR": {"feature_size": 48},
        },
    },
    SDMC_FAMILY: {
        "batch_size": 4,
        "selection_metric": "Dice",
        "schedule": {"epochs": 300, "iterations_per_epoch": 250, "val_iterations": 50, "optimizer": "adamw",
                     "learning_rate": 4e-5, "weight_decay": 0.01, "warmup_iterations": 10000, "lr_decay": "constant",
                     "grad_clip": 1.0,
                     "ema_decay": 0.9999},
        "size_preset": "sd",
        "networks": SDMC_SIZES["sd"],
        "diffusion": _DIFFUSION,
    },
    MASK_AUTOENCODER_FAMILY: {
        "batch_size": 4,
        "selection_metric": "Dice",
        "schedule": {"epochs": 50, "iterations_per_epoch": 250, "val_iterations": 50, "optimizer": "adam",
                     "adam_betas": [0.5, 0.9], "learning_rate": 1.8e-5, "weight_decay": 0.0,
                     "warmup_iterations": 0, "lr_decay": "constant", "grad_clip": 1.0},
        # the published LPIPS and adversarial terms are not implemented: weights 0
        "loss_weights": {"l1": 1.0, "kl": 1e-6, "dice": 1.0, "perceptual": 0.0, "adversarial": 0.0},
        "size_preset": "sd",
        "networks": {"autoencoder": SDMC_SIZES["sd"]["autoencoder"]},
    },
}

_CPU = copy.deepcopy(_GPU)
_CPU[BASELINE_FAMILY].update(batch_size=8)
_CPU[BASELINE_FAMILY]["schedule"].update(epochs=20, iterations_per_epoch=50, val_iterations=4, learning_rate=1e-3,
                                    lr_decay="poly")
_CPU[BASELINE_FAMILY]["networks"] = {
    "UNet": {"features": [16, 16, 32, 64, 128, 16]},
    "ResUNet34": {"decoder_channels": [64, 32, 16, 16, 8], "encoder_weights": None},
    "SegResNet": {"init_filters": 8},
    "SwinUNETR": {"feature_size": 12},
}
_CPU[SDMC_FAMILY].update(batch_size=8)
_CPU[SDMC_FAMILY]["schedule"].update(epochs=20, iterations_per_epoch=50, val_iterations=4, learning_rate=5e-4,
                                warmup_iterations=20, ema_decay=0.99, lr_decay="poly")
# A small UNet learns v in minutes, where epsilon at t = 999 needs 300 GPU epochs (networks/sdmc.py)
_CPU[SDMC_FAMILY]["diffusion"].update(prediction_type="v_prediction")
_CPU[MASK_AUTOENCODER_FAMILY].update(batch_size=8)
_CPU[MASK_AUTOENCODER_FAMILY]["schedule"].update(epochs=20, iterations_per_epoch=50, val_iterations=4, learning_rate=1e-3,
                                            lr_decay="poly")
# Ten times the published KL weight: with the softmax Dice term, 1e-6 gave latents that SDMC-Seg
# failed to predict (0.265 after 15 minutes), 1e-5 gave 0.568 (README, Performance).
_CPU[MASK_AUTOENCODER_FAMILY]["loss_weights"].update(kl=1e-5)


def with_sdmc_size(families: dict, size_preset: str) -> dict:
    """`families` with the SDMC and mask autoencoder networks set to a named size."""
    families = copy.deepcopy(families)
    families[SDMC_FAMILY].update(size_preset=size_preset, networks=copy.deepcopy(SDMC_SIZES[size_preset]))
    families[MASK_AUTOENCODER_FAMILY].update(
        size_preset=size_preset, networks={"autoencoder": copy.deepcopy(SDMC_SIZES[size_preset]["autoencoder"])})
    return families


_CPU = with_sdmc_size(_CPU, "tiny")


def gpu_families() -> dict:
    return copy.deepcopy(_GPU)


def cpu_families() -> dict:
    return copy.deepcopy(_CPU)


def memory_models(family_name: str, family: dict, in_channels: int,
                  image_size: int | tuple[int, int]) -> list[MemoryModel]:
    """One memory model per network trained in this family (the batch must fit each) on images of
    `image_size` (a side, or (rows, columns))."""
    image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return list(_memory_models(family_name, json.dumps(family["networks"], sort_keys=True), in_channels, image_size))


@functools.lru_cache(maxsize=64)
def _memory_models(family_name: str, networks_json: str, in_channels: int,
                   image_size: tuple[int, int]) -> tuple[MemoryModel, ...]:
    """Cached by value: planning asks for the same networks at the same sizes once per memory target
    and batch size, and each estimate traces the whole forward pass."""
    networks = json.loads(networks_json)
    if family_name == BASELINE_FAMILY:
        return tuple(_baseline_memory(name, sizes, in_channels, image_size) for name, sizes in networks.items())
    if family_name == SDMC_FAMILY:
        return (_sdmc_memory(networks, image_size),)
    return (_autoencoder_memory(networks["autoencoder"], image_size),)


def _baseline_memory(name: str, sizes: dict, in_channels: int, image_size: tuple[int, int]) -> MemoryModel:
    network = on_meta(lambda: build_baseline(name, sizes, in_channels, len(LABELS)))
    image = torch.empty(1, in_channels, *image_size, device="meta")
    return MemoryModel(TRAINABLE_BYTES_PER_PARAMETER * parameter_count(network), activation_bytes(network, image))


def native_image_multiple(family_name: str, family: dict) -> int:
    """Image sides a family's networks run on without padding are multiples of this."""
    if family_name == SDMC_FAMILY:
        return DOWNSAMPLING_FACTOR * latent_multiple(family["networks"]["denoiser"])
    return DOWNSAMPLING_FACTOR if family_name == MASK_AUTOENCODER_FAMILY else NETWORK_DIVISOR


def _sdmc_memory(networks: dict, image_size: tuple[int, int]) -> MemoryModel:
    """Trainable image encoder and denoiser (+ its EMA copy); frozen mask autoencoder."""
    latent_size = [padded_latent_size(networks["denoiser"], side // DOWNSAMPLING_FACTOR) for side in image_size]
    autoencoder = on_meta(lambda: build_autoencoder(networks["autoencoder"]))
    denoiser = on_meta(lambda: build_denoiser(networks["denoiser"], latent_size[0]))
    image = torch.empty(1, 3, *image_size, device="meta")
    latents = torch.empty(1, 2 * LATENT_CHANNELS, *latent_size, device="meta")
    timestep = torch.zeros(1, dtype=torch.long, device="meta")
    trainable = parameter_count(autoencoder.encoder) + parameter_count(denoiser)
    fixed = (TRAINABLE_BYTES_PER_PARAMETER * trainable + FROZEN_BYTES_PER_PARAMETER * parameter_count(denoiser)
             + FROZEN_BYTES_PER_PARAMETER * parameter_count(autoencoder))
    per_sample = activation_bytes(autoencoder.encoder, image) + activation_bytes(denoiser, latents, timestep)
    return MemoryModel(fixed, per_sample)


def _autoencoder_memory(sizes: dict, image_size: tuple[int, int]) -> MemoryModel:
    autoencoder = on_meta(lambda: build_autoencoder(sizes))
    image = torch.empty(1, 3, *image_size, device="meta")
    return MemoryModel(TRAINABLE_BYTES_PER_PARAMETER * parameter_count(autoencoder),
                       activation_bytes(lambda x: autoencoder(x).sample, image))
