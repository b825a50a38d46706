"""A PyTorch Lightning checkpoint of SDSeg / SDMC-Seg (the reference code), read part by part.

The checkpoint is read without running any of its code (`CompVisCheckpoint`). Its `state_dict`:

    first_stage_model.*          the mask autoencoder (LDM AutoencoderKL)
    cond_stage_model.encoder.*   the image encoder (an LDM Encoder, the VAE encoder's layout)
    cond_stage_model.out.*       the image encoder's 1x1 convolution 8 -> 4
    model.diffusion_model.*      the denoising UNet (openaimodel.UNetModel), its training weights
    model_ema.*                  LitEma: "diffusion_model" + each UNet parameter's name without its
                                 dots, plus `decay` and `num_updates`
    scale_factor, betas, alphas_cumprod, ...   buffers: the latent scale and DDPM's schedule

`unet_sizes` and `encoder_sizes` read the networks' sizes from their weights.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from sdmcunet.utils.errors import SDMCError
from sdmcunet.weights.compvis_checkpoint import CompVisCheckpoint

# Checkpoint key prefixes, by part of the model.
MASK_AUTOENCODER = "first_stage_model."
IMAGE_ENCODER = "cond_stage_model.encoder."
PROJECTION = "cond_stage_model.out."
UNET = "model.diffusion_model."
EMA = "model_ema."
EMA_NAME_PREFIX = "diffusion_model"  # LitEma averages DiffusionWrapper, whose UNet is `diffusion_model`
EMA_COUNTERS = ("model_ema.decay", "model_ema.num_updates")
PARTS = {MASK_AUTOENCODER: "the mask autoencoder", IMAGE_ENCODER: "the image encoder",
         PROJECTION: "the image encoder's 1x1 projection", UNET: "the denoising UNet"}
# Buffers of LDM's DDPM (register_schedule) and its optional learned log-variance: not model weights.
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights", "logvar",
})
_SHOWN_KEYS = 5


@dataclass
class ReferenceWeights:
    """The parts of a reference checkpoint, in the LDM names of each part (prefixes removed)."""

    mask_autoencoder: dict[str, torch.Tensor]
    image_encoder: dict[str, torch.Tensor]  # encoder.*
    projection: dict[str, torch.Tensor]  # weight, bias
    denoiser: dict[str, torch.Tensor]  # the training weights
    ema_denoiser: dict[str, torch.Tensor] | None  # the EMA weights in the UNet's own (dotted) names, if asked for
    ema_updates: int | None
    ema_decay: float | None
    buffers: dict[str, torch.Tensor]  # scale_factor and the schedule
    global_step: int | None
    epoch: int | None


def read_reference_checkpoint(path: Path, use_ema: bool) -> ReferenceWeights:
    """Every part of the SDSeg / SDMC-Seg checkpoint `path` (the EMA weights if `use_ema`), or an SDMCError
    naming what does not fit."""
    with CompVisCheckpoint(path) as checkpoint:
        state = checkpoint.state_dict()
        content = checkpoint.content
    parts = _split(state, path)
    ema = {name: value for name, value in state.items() if name.startswith(EMA) and name not in EMA_COUNTERS}
    if use_ema and not ema:
        raise SDMCError(f"{path}: holds no EMA weights (model_ema.*: trained with use_ema false?); import its "
                        f"training weights with --no-ema")
    return ReferenceWeights(
        mask_autoencoder={name.removeprefix(MASK_AUTOENCODER): value for name, value in parts[MASK_AUTOENCODER].items()
                          if not name.startswith(f"{MASK_AUTOENCODER}loss.")},  # LPIPS / discriminator of its training
        image_encoder={name.removeprefix("cond_stage_model."): value for name, value in parts[IMAGE_ENCODER].items()},
        projection={name.removeprefix(PROJECTION): value for name, value in parts[PROJECTION].items()},
        denoiser={name.removeprefix(UNET): value for name, value in parts[UNET].items()},
        ema_denoiser=_ema_denoiser(ema, parts[UNET], path) if use_ema else None,
        ema_updates=int(state["model_ema.num_updates"]) if "model_ema.num_updates" in state else None,
        ema_decay=stored_float(state["model_ema.decay"]) if "model_ema.decay" in state else None,
        buffers={name: value for name, value in state.items() if "." not in name},
        global_step=_integer(content, "global_step"), epoch=_integer(content, "epoch"),
    )


def stored_float(tensor: torch.Tensor) -> float:
    """A float32 scalar as the shortest decimal that reads back as it (0.9999, not 0.9998999834060669)."""
    return float(str(np.float32(tensor.item())))


def _integer(content: object, key: str) -> int | None:
    value = content.get(key) if isinstance(content, dict) else None
    return value if isinstance(value, int) else None


def _split(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The checkpoint's weights by part; an SDMCError for missing parts, unknown keys and label embeddings."""
    parts = {prefix: {name: value for name, value in state.items() if name.startswith(prefix)} for prefix in PARTS}
    if label_embedding := [name for name in parts[UNET] if name.startswith(f"{UNET}label_emb.")]:
        raise SDMCError(f"{path}: a class-conditioned UNet ({_listed(label_embedding)}: SDSeg's multi-class variant), "
                        f"another architecture than SDMC-Seg's, which decodes all classes at once; it cannot be "
                        f"imported")
    known = set().union(*parts.values()) | SCHEDULE_BUFFERS | {"scale_factor"}
    unknown = [name for name in state if name not in known and not name.startswith(EMA)]
    missing = [f"{prefix}* ({what})" for prefix, what in PARTS.items() if not parts[prefix]]
    problems = [f"{label} ({len(names)}): {_listed(names)}"
                for label, names in (("weights of no part of SDMC-Seg", unknown), ("parts it lacks", missing)) if names]
    if problems:
        raise SDMCError(f"{path}: not an SDSeg / SDMC-Seg checkpoint: " + "; ".join(problems))
    return parts


def lit_ema_names(unet_names: Iterable[str]) -> dict[str, str]:
    """LitEma buffer name (without `model_ema.`) -> the UNet parameter it averages; ambiguity is an error.

    LitEma names its buffers by removing the dots from the averaged parameter's name, so two names
    could collapse onto one (`a.b1` and `ab.1`): then nobody can tell which average is whose."""
    by_ema_name: dict[str, str] = {}
    for name in unet_names:
        ema_name = EMA_NAME_PREFIX + name.replace(".", "")
        if ema_name in by_ema_name:
            raise SDMCError(f"the EMA weights cannot be matched to the UNet: {UNET}{by_ema_name[ema_name]} and "
                            f"{UNET}{name} both become {EMA}{ema_name}; import the training weights with --no-ema")
        by_ema_name[ema_name] = name
    return by_ema_name


def _ema_denoiser(ema: Mapping[str, torch.Tensor], unet: Mapping[str, torch.Tensor],
                  path: Path) -> dict[str, torch.Tensor]:
    """The EMA weights under the UNet's own names: one EMA buffer per UNet weight, of its shape."""
    try:
        owners = lit_ema_names(name.removeprefix(UNET) for name in unet)
    except SDMCError as error:
        raise SDMCError(f"{path}: {error}") from None
    stored = {name.removeprefix(EMA): value for name, value in ema.items()}
    unknown = [f"{EMA}{name}" for name in stored if name not in owners]
    missing = [f"{EMA}{name}" for name in owners if name not in stored]
    shapes = {name: tuple(unet[UNET + owner].shape) for name, owner in owners.items()}
    mismatched = [f"{EMA}{name} {tuple(value.shape)} for {UNET}{owners[name]} {shapes[name]}"
                  for name, value in stored.items() if name in owners and tuple(value.shape) != shapes[name]]
    problems = [f"{label} ({len(names)}): {_listed(names)}"
                for label, names in (("EMA weights of no UNet weight", unknown),
                                     ("UNet weights without an EMA", missing), ("shape mismatches", mismatched))
                if names]
    if problems:
        raise SDMCError(f"{path}: its EMA weights (model_ema.*) do not match its UNet: " + "; ".join(problems)
                        + "; import the training weights with --no-ema")
    return {owners[name]: value for name, value in stored.items()}


def _listed(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN_KEYS]) + (", ..." if len(names) > _SHOWN_KEYS else "")


# ================================================================ sizes the weights show

def encoder_sizes(encoder: torch.nn.Module) -> dict:
    """ch, ch_mult and num_res_blocks of a converted (diffusers) VAE encoder."""
    ch = encoder.conv_in.out_channels
    return {"ch": ch, "ch_mult": [block.resnets[0].out_channels // ch for block in encoder.down_blocks],
            "num_res_blocks": len(encoder.down_blocks[0].resnets)}


def unet_sizes(weights: Mapping[str, torch.Tensor], path: Path) -> dict:
    """The openaimodel UNet's sizes from its weights (LDM names): model_channels, channel_mult,
    num_res_blocks, attention_resolutions (downsampling rates), in_channels and out_channels.

    Each level has num_res_blocks input blocks and one more output block, whose last one (but at the
    deepest level) ends with an upsampling ResBlock: the first of those gives num_res_blocks."""
    outputs = sorted({int(name.split(".")[1]) for name in weights if name.startswith("output_blocks.")})
    upsampling = [index for index in outputs if any(f"output_blocks.{index}.{position}.in_layers.0.weight" in weights
                                                     for position in (1, 2))]
    per_level = upsampling[0] + 1 if upsampling else len(outputs)
    levels = len(outputs) // per_level if per_level else 0
    if not levels or len(outputs) % per_level or len(upsampling) != levels - 1:
        raise SDMCError(f"{path}: model.diffusion_model is not an LDM UNet (openaimodel.UNetModel) layout: "
                        f"{len(outputs)} output blocks, upsampling in {upsampling}")
    try:
        model_channels, in_channels = weights["input_blocks.0.0.weight"].shape[:2]
        firsts = [1 + level * per_level for level in range(levels)]  # the first input block of each level
        channel_mult = [weights[f"input_blocks.{index}.0.out_layers.3.weight"].shape[0] // model_channels
                        for index in firsts]
        out_channels = weights["out.2.weight"].shape[0]
    except KeyError as error:
        raise SDMCError(f"{path}: model.diffusion_model is not an LDM UNet (no weight {UNET}{error.args[0]})") from None
    attention = [2**level for level, index in enumerate(firsts) if f"input_blocks.{index}.1.qkv.weight" in weights]
    return {"model_channels": model_channels, "channel_mult": channel_mult, "num_res_blocks": per_level - 1,
            "attention_resolutions": attention, "in_channels": in_channels, "out_channels": out_channels}
