"""Weights in the CompVis layouts, for where the published files cannot be had (tests, benchmarks, the GPU check).

Key names and shapes are written down from the LDM architecture (ldm/modules/diffusionmodules/
model.py and openaimodel.py, ldm/models/autoencoder.py), not from this project's conversion
tables, so that converting them checks those tables. `standin_state_dict` fills them with values
of a freshly initialised network (unit norms, zero biases, weights scaled by their fan-in), on which
training steps stay finite; `write_compvis_checkpoint` saves them as a `.ckpt` the converters read.
"""

import math
from pathlib import Path

import torch

from sdmcunet.utils.files import atomic_output


def _conv(out_channels: int, in_channels: int, kernel: int, *, dims: int = 2) -> dict[str, tuple]:
    return {"weight": (out_channels, in_channels) + (kernel,) * dims, "bias": (out_channels,)}


def _norm(channels: int) -> dict[str, tuple]:
    return {"weight": (channels,), "bias": (channels,)}


def _add(shapes: dict, prefix: str, layer: dict[str, tuple]) -> None:
    shapes.update({f"{prefix}.{parameter}": shape for parameter, shape in layer.items()})


def _vae_resnet(shapes: dict, prefix: str, in_channels: int, out_channels: int) -> None:
    _add(shapes, f"{prefix}.norm1", _norm(in_channels))
    _add(shapes, f"{prefix}.conv1", _conv(out_channels, in_channels, 3))
    _add(shapes, f"{prefix}.norm2", _norm(out_channels))
    _add(shapes, f"{prefix}.conv2", _conv(out_channels, out_channels, 3))
    if in_channels != out_channels:
        _add(shapes, f"{prefix}.nin_shortcut", _conv(out_channels, in_channels, 1))


def _vae_middle(shapes: dict, prefix: str, channels: int) -> None:
    _vae_resnet(shapes, f"{prefix}.mid.block_1", channels, channels)
    _add(shapes, f"{prefix}.mid.attn_1.norm", _norm(channels))
    for layer in ("q", "k", "v", "proj_out"):
        _add(shapes, f"{prefix}.mid.attn_1.{layer}", _conv(channels, channels, 1))
    _vae_resnet(shapes, f"{prefix}.mid.block_2", channels, channels)


def ldm_autoencoder_shapes(ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int = 4) -> dict:
    """ldm.models.autoencoder.AutoencoderKL (Encoder / Decoder of diffusionmodules/model.py)."""
    shapes: dict[str, tuple] = {}
    _add(shapes, "encoder.conv_in", _conv(ch, 3, 3))
    block_in = ch
    for level, multiplier in enumerate(ch_mult):
        for index in range(num_res_blocks):
            _vae_resnet(shapes, f"encoder.down.{level}.block.{index}", block_in, ch * multiplier)
            block_in = ch * multiplier
        if level != len(ch_mult) - 1:
            _add(shapes, f"encoder.down.{level}.downsample.conv", _conv(block_in, block_in, 3))
    _vae_middle(shapes, "encoder", block_in)
    _add(shapes, "encoder.norm_out", _norm(block_in))
    _add(shapes, "encoder.conv_out", _conv(2 * z_channels, block_in, 3))
    _add(shapes, "quant_conv", _conv(2 * z_channels, 2 * z_channels, 1))
    _add(shapes, "post_quant_conv", _conv(z_channels, z_channels, 1))
    _add(shapes, "decoder.conv_in", _conv(block_in, z_channels, 3))
    _vae_middle(shapes, "decoder", block_in)
    for level in reversed(range(len(ch_mult))):
        for index in range(num_res_blocks + 1):
            _vae_resnet(shapes, f"decoder.up.{level}.block.{index}", block_in, ch * ch_mult[level])
            block_in = ch * ch_mult[level]
        if level != 0:
            _add(shapes, f"decoder.up.{level}.upsample.conv", _conv(block_in, block_in, 3))
    _add(shapes, "decoder.norm_out", _norm(block_in))
    _add(shapes, "decoder.conv_out", _conv(3, block_in, 3))
    return shapes


def _unet_resnet(shapes: dict, prefix: str, in_channels: int, out_channels: int, embedding: int) -> None:
    _add(shapes, f"{prefix}.in_layers.0", _norm(in_channels))
    _add(shapes, f"{prefix}.in_layers.2", _conv(out_channels, in_channels, 3))
    shapes |= {f"{prefix}.emb_layers.1.weight": (2 * out_channels, embedding),
               f"{prefix}.emb_layers.1.bias": (2 * out_channels,)}
    _add(shapes, f"{prefix}.out_layers.0", _norm(out_channels))
    _add(shapes, f"{prefix}.out_layers.3", _conv(out_channels, out_channels, 3))
    if in_channels != out_channels:
        _add(shapes, f"{prefix}.skip_connection", _conv(out_channels, in_channels, 1))


def _unet_attention(shapes: dict, prefix: str, channels: int) -> None:
    _add(shapes, f"{prefix}.norm", _norm(channels))
    _add(shapes, f"{prefix}.qkv", _conv(3 * channels, channels, 1, dims=1))
    _add(shapes, f"{prefix}.proj_out", _conv(channels, channels, 1, dims=1))


def ldm_unet_shapes(sizes: dict, in_channels: int = 4) -> dict:
    """openaimodel.UNetModel with use_scale_shift_norm and resblock_updown (the LDM churches config)."""
    model_channels, levels = sizes["model_channels"], len(sizes["channel_mult"])
    embedding = 4 * model_channels
    attention = [2**level in sizes["attention_resolutions"] for level in range(levels)]  # ds in attention_resolutions
    shapes = {"time_embed.0.weight": (embedding, model_channels), "time_embed.0.bias": (embedding,),
              "time_embed.2.weight": (embedding, embedding), "time_embed.2.bias": (embedding,)}
    _add(shapes, "input_blocks.0.0", _conv(model_channels, in_channels, 3))
    channels, skip_channels, index = model_channels, [model_channels], 1
    for level, multiplier in enumerate(sizes["channel_mult"]):
        for _ in range(sizes["num_res_blocks"]):
            _unet_resnet(shapes, f"input_blocks.{index}.0", channels, model_channels * multiplier, embedding)
            channels = model_channels * multiplier
            if attention[level]:
                _unet_attention(shapes, f"input_blocks.{index}.1", channels)
            skip_channels.append(channels)
            index += 1
        if level != levels - 1:
            _unet_resnet(shapes, f"input_blocks.{index}.0", channels, channels, embedding)
            skip_channels.append(channels)
            index += 1
    _unet_resnet(shapes, "middle_block.0", channels, channels, embedding)
    _unet_attention(shapes, "middle_block.1", channels)
    _unet_resnet(shapes, "middle_block.2", channels, channels, embedding)
    index = 0
    for level, multiplier in reversed(list(enumerate(sizes["channel_mult"]))):
        for layer in range(sizes["num_res_blocks"] + 1):
            in_channels = channels + skip_channels.pop()
            _unet_resnet(shapes, f"output_blocks.{index}.0", in_channels, model_channels * multiplier, embedding)
            channels = model_channels * multiplier
            position = 1
            if attention[level]:
                _unet_attention(shapes, f"output_blocks.{index}.1", channels)
                position = 2
            if level and layer == sizes["num_res_blocks"]:
                _unet_resnet(shapes, f"output_blocks.{index}.{position}", channels, channels, embedding)
            index += 1
    _add(shapes, "out.0", _norm(channels))
    _add(shapes, "out.2", _conv(4, channels, 3))
    return shapes


def standin_state_dict(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Values of a freshly initialised network for `shapes`: norms 1, biases 0, weights N(0, 1/fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in shapes.items():
        if name.endswith("bias"):
            weights[name] = torch.zeros(shape)
        elif len(shape) == 1:
            weights[name] = torch.ones(shape)
        else:
            weights[name] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
    return weights


def write_compvis_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], **content: object) -> Path:
    """A Lightning-style checkpoint: `{"state_dict": ..., **content}` in torch's zip format, written atomically."""
    with atomic_output(path) as temporary:
        torch.save({"state_dict": state_dict, **content}, temporary)
    return path


# ---------------------------------------------------------------- whole SDSeg / SDMC-Seg checkpoints

def ldm_schedule_buffers(linear_start: float = 0.0015, linear_end: float = 0.0155,
                         timesteps: int = 1000) -> dict[str, torch.Tensor]:
    """The buffers LDM's DDPM registers (ddpm.py, register_schedule) for its "linear" schedule (make_beta_schedule:
    a line in sqrt(beta)), computed in float64 and stored as float32, as LDM does."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas = 1 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1 - previous) / (1 - alphas_cumprod)
    buffers = {
        "betas": betas, "alphas_cumprod": alphas_cumprod, "alphas_cumprod_prev": previous,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * previous.sqrt() / (1 - alphas_cumprod),
        "posterior_mean_coef2": (1 - previous) * alphas.sqrt() / (1 - alphas_cumprod),
    }
    return {name: value.float() for name, value in buffers.items()}


def sdseg_state_dict(autoencoder_sizes: dict, denoiser_sizes: dict, seed: int = 0, ema: bool = True,
                     scale_factor: float = 0.2, **schedule: float) -> dict[str, torch.Tensor]:
    """The `state_dict` of an SDSeg / SDMC-Seg LatentDiffusion (lin-tianyu/Stable-Diffusion-Seg, arozcan/sdmc-seg).

    first_stage_model.*           the mask autoencoder (ldm AutoencoderKL)
    cond_stage_model.encoder.*    the image encoder: an LDM Encoder, the autoencoder's encoder layout
    cond_stage_model.out.*        its 1x1 convolution 8 -> 4 (AEEncoderEmbedder.out)
    model.diffusion_model.*       the UNet, 8 input channels (concat conditioning); the training weights
    model_ema.*                   LitEma: one buffer per UNet parameter named "diffusion_model" + the parameter's
                                  name without its dots, plus `decay` and `num_updates` (`ema`: with them)
    scale_factor, betas, ...      the latent scale (1/std) and the schedule buffers (`schedule`: linear_start,
                                  linear_end, timesteps of `ldm_schedule_buffers`)
    The EMA weights differ from the training weights, so that a test can tell which were taken.
    """
    autoencoder = ldm_autoencoder_shapes(**autoencoder_sizes)
    encoder = {name: shape for name, shape in autoencoder.items() if name.startswith("encoder.")}
    unet = standin_state_dict(ldm_unet_shapes(denoiser_sizes, in_channels=8), seed + 2)
    state = {f"first_stage_model.{name}": value for name, value in standin_state_dict(autoencoder, seed).items()}
    state |= {f"cond_stage_model.{name}": value for name, value in standin_state_dict(encoder, seed + 1).items()}
    state |= {f"cond_stage_model.out.{name}": value
              for name, value in standin_state_dict({"weight": (4, 8, 1, 1), "bias": (4,)}, seed + 3).items()}
    state |= {f"model.diffusion_model.{name}": value for name, value in unet.items()}
    if ema:
        generator = torch.Generator().manual_seed(seed + 4)
        state |= {f"model_ema.diffusion_model{name.replace('.', '')}": value + 0.01 * torch.randn(
            value.shape, generator=generator) for name, value in unet.items()}
        state |= {"model_ema.decay": torch.tensor(0.9999),
                  "model_ema.num_updates": torch.tensor(1234, dtype=torch.int32)}
    return state | {"scale_factor": torch.tensor(scale_factor)} | ldm_schedule_buffers(**schedule)


FINETUNED_MASK = "models/first_stage_models/kl-f8/model_finetuned_mask.ckpt"  # the released fine-tuned mask VAE


def sdmc_seg_config(autoencoder_sizes: dict, denoiser_sizes: dict, image_size: int = 256) -> dict:
    """The training YAML of the reference code for these sizes, as a mapping (arozcan/sdmc-seg
    configs/SDMCSeg/stroke-ldm-kl-8_finetuned.yaml: fine-tuned mask autoencoder, trainable image encoder)."""
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": autoencoder_sizes["ch"], "ch_mult": list(autoencoder_sizes["ch_mult"]),
                "num_res_blocks": autoencoder_sizes["num_res_blocks"], "attn_resolutions": [], "dropout": 0.0}
    unet = {key: denoiser_sizes[key] for key in ("model_channels", "attention_resolutions", "num_res_blocks",
                                                  "channel_mult", "num_heads", "dropout")}
    data = {"size": image_size, "data_root": "dataset/stroke2021/", "mask_onehot": True}
    return {
        "model": {
            "base_learning_rate": 1e-5,
            "target": "ldm.models.diffusion.SDMCSeg.SDMCSeg",
            "params": {
                "num_classes": 3, "load_only_unet": True, "linear_start": 0.0015, "linear_end": 0.0155,
                "num_timesteps_cond": 1, "timesteps": 1000, "loss_type": "l1", "first_stage_key": "segmentation",
                "cond_stage_key": "image", "conditioning_key": "concat", "image_size": image_size // 8,
                "channels": 4, "cond_stage_trainable": True, "concat_mode": True, "scale_by_std": True,
                "use_ema": True, "ckpt_path": "models/ldm/lsun_churches256/model.ckpt",
                "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                                "params": {"image_size": image_size // 8, "in_channels": 8, "out_channels": 4,
                                           **unet, "use_scale_shift_norm": True, "resblock_updown": True}},
                "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                                       "params": {"embed_dim": 4, "monitor": "val/rec_loss",
                                                  "ckpt_path": FINETUNED_MASK, "ddconfig": ddconfig,
                                                  "lossconfig": {"target": "torch.nn.Identity"}}},
                "cond_stage_config": {"target": "ldm.modules.encoders.modules.AEEncoderEmbedder",
                                      "params": {"ckpt_path": "models/first_stage_models/kl-f8/model.ckpt",
                                                 "embed_dim": 4, **ddconfig, "dropout": 0.2}},
            },
        },
        "data": {"target": "main.DataModuleFromConfig",
                 "params": {"batch_size": 4, **{split: {"target": f"ldm.data.stroke.Stroke{split.capitalize()}",
                                                        "params": data} for split in ("train", "validation", "test")}}},
    }
