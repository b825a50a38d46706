"""Converting CompVis weights into our diffusers models; `sdmc_convert_weights` writes them to a folder.

Every checkpoint tensor must find a place and every model weight must be filled, with equal
shapes, or SDMCError names the keys that do not fit: weights are never loaded partially.

Autoencoder ("kl-f8": `encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`; a
`first_stage_model.` prefix is dropped, `loss.*` (LPIPS, discriminator) is ignored). The mapping
is that of diffusers' `convert_ldm_vae_checkpoint`, which silently skips what it does not know
(hence this table); ch, ch_mult and num_res_blocks are read from the weights:
    {encoder,decoder}.norm_out              -> *.conv_norm_out
    encoder.down.L.block.J                  -> encoder.down_blocks.L.resnets.J (nin_shortcut -> conv_shortcut)
    encoder.down.L.downsample.conv          -> encoder.down_blocks.L.downsamplers.0.conv
    decoder.up.L.block.J / upsample.conv    -> decoder.up_blocks.(levels-1-L).resnets.J / upsamplers.0.conv
    *.mid.block_1 / attn_1 / block_2        -> *.mid_block.resnets.0 / attentions.0 / resnets.1
    attention norm, q, k, v, proj_out       -> group_norm, to_q, to_k, to_v, to_out.0 (1x1 conv -> linear)
The encoder alone (SDSeg's image encoder, `cond_stage_model.encoder.*`) converts by the same
table with `convert_vae_encoder`.

Denoiser (openaimodel UNetModel with use_scale_shift_norm and resblock_updown, the LDM
LSUN-Churches-256 config; a `model.diffusion_model.` prefix is dropped, the rest of a full LDM
checkpoint (first stage, `model_ema.*`, schedule buffers) is ignored: the non-EMA weights are
used, as diffusers does by default):
    time_embed.0 / time_embed.2             -> time_embedding.linear_1 / linear_2
    input_blocks.0.0                        -> conv_in, widened from 4 to 8 input channels: the
                                               image-latent channels 4..7 start at zero (docs/design.md §5)
    input_blocks.i.0 / i.1                  -> down_blocks.L.resnets.J / attentions.J, level by level
    input_blocks.i.0 closing a level        -> down_blocks.L.downsamplers.0 (a ResBlock with down=True)
    middle_block.0 / 1 / 2                  -> mid_block.resnets.0 / attentions.0 / resnets.1
    output_blocks.i.0 / .1 / last           -> up_blocks.U.resnets.J / attentions.J / upsamplers.0
    out.0 / out.2                           -> conv_norm_out / conv_out
    ResBlock in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection
                                            -> norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut
    AttentionBlock norm, proj_out (conv1d)  -> group_norm, to_out.0 (linear)
    AttentionBlock qkv (conv1d)             -> to_q, to_k, to_v: its rows are ordered head by head
                                               ([q_h, k_h, v_h], "legacy" order), so it is split
                                               with the checkpoint's head count (`num_heads`)
                                               and channel block h of each projection is head h.

The result computes what the LDM UNet computed, attention heads included (`build_denoiser` runs
`num_heads` heads in every block, as LDM does). Saved with `save_pretrained`, an autoencoder
reloads exactly with diffusers' `AutoencoderKL.from_pretrained`; a denoiser with
`sdmcunet.networks.latent_diffusion.load_denoiser`, and with diffusers' `UNet2DModel.from_pretrained`
alone when its attention blocks share one head width (see latent_diffusion: the published UNet's
blocks do not, which UNet2DModel's config cannot express).
"""

import argparse
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from diffusers import AutoencoderKL, UNet2DModel
from diffusers.models.autoencoders.vae import Encoder

from sdmcunet.experiment_planning.presets import SDMC_SIZES
from sdmcunet.networks.latent_diffusion import LATENT_CHANNELS, build_autoencoder, build_denoiser
from sdmcunet.utils.cli import configure_logging, console_entry
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_json, read_json, sha256
from sdmcunet.weights.compvis_checkpoint import read_compvis_state_dict

KINDS = ("vae", "unet")
# Written into every converted folder: what it was converted from, so that a re-run can skip it.
CONVERSION_RECORD = "sdmc_conversion.json"
_SHOWN_KEYS = 5

# LDM layer name -> diffusers layer name, inside one block ("" is the block itself).
_WHOLE = {"": ""}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_FUSED_QKV = "qkv"
_UNET_ATTENTION = {"norm": "group_norm", "qkv": _FUSED_QKV, "proj_out": "to_out.0"}
# Attention projections: 1x1 convolutions in LDM, linear layers in diffusers (the same matrix).
_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Block:
    """Where one LDM module goes in the diffusers model, and how its layers are renamed."""

    target: str
    layers: Mapping[str, str]


@dataclass
class _Converted:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # diffusers name -> tensor
    origin: dict[str, str] = field(default_factory=dict)  # diffusers name -> LDM name
    unplaced: list[str] = field(default_factory=list)  # LDM names with no place in the model


def convert_vae(state_dict: Mapping[str, torch.Tensor], source: str | Path = "checkpoint") -> AutoencoderKL:
    """The kl-f8 autoencoder of an SD / LDM state dict (sizes read from it); `source` names it in errors."""
    weights = _autoencoder_weights(state_dict)
    try:
        model = build_autoencoder(_autoencoder_sizes(weights, source))
    except ValueError as error:
        raise SDMCError(f"{source}: not a kl-f8 style autoencoder ({error})") from None
    blocks = _autoencoder_blocks(len(model.config.block_out_channels), model.config.layers_per_block)
    _load_exactly(model, _rename(weights, blocks, heads=1), source, "kl-f8 autoencoder")
    return model


def convert_vae_encoder(state_dict: Mapping[str, torch.Tensor], source: str | Path = "checkpoint") -> Encoder:
    """The encoder half of a kl-f8 autoencoder from `encoder.*` weights alone (SDSeg's image encoder,
    `cond_stage_model.encoder.*` without its prefix), sizes read from them; the autoencoder's mapping."""
    try:
        encoder = build_autoencoder(_autoencoder_sizes(state_dict, source)).encoder
    except ValueError as error:
        raise SDMCError(f"{source}: not a kl-f8 style encoder ({error})") from None
    all_blocks = _autoencoder_blocks(len(encoder.down_blocks), len(encoder.down_blocks[0].resnets))
    blocks = {name: _Block(block.target.removeprefix("encoder."), block.layers)
              for name, block in all_blocks.items() if name.startswith("encoder.")}
    _load_exactly(encoder, _rename(state_dict, blocks, heads=1), source, "kl-f8 encoder")
    return encoder


def convert_unet(state_dict: Mapping[str, torch.Tensor], latent_size: int = 32, sizes: dict | None = None,
                 source: str | Path = "checkpoint") -> UNet2DModel:
    """Our denoiser (`build_denoiser(sizes)`, default the "sd" preset) from an LDM UNet, input widened to 8.

    `latent_size` is only recorded (the config's `sample_size`): LDM places attention by downsampling rate."""
    sizes = sizes or SDMC_SIZES["sd"]["denoiser"]
    model = build_denoiser(sizes, latent_size)
    attention = ["Attn" in block_type for block_type in model.config.down_block_types]
    blocks = _denoiser_blocks(len(attention), model.config.layers_per_block, attention)
    converted = _rename(_denoiser_weights(state_dict), blocks, heads=sizes["num_heads"])
    _widen_input(converted.tensors)
    _load_exactly(model, converted, source, "denoiser")
    return model


def _autoencoder_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "first_stage_model."
    if any(name.startswith(prefix) for name in state_dict):  # a full LDM checkpoint
        state_dict = {name.removeprefix(prefix): value for name, value in state_dict.items() if name.startswith(prefix)}
    return {name: value for name, value in state_dict.items() if not name.startswith("loss.")}


def _denoiser_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "model.diffusion_model."
    if any(name.startswith(prefix) for name in state_dict):
        return {name.removeprefix(prefix): value for name, value in state_dict.items() if name.startswith(prefix)}
    return dict(state_dict)


def _autoencoder_sizes(weights: Mapping[str, torch.Tensor], source: str | Path) -> dict:
    """ch, ch_mult and num_res_blocks of an LDM autoencoder, read from its encoder's weights."""
    try:
        ch = weights["encoder.conv_in.weight"].shape[0]
        levels = len({name.split(".")[2] for name in weights if name.startswith("encoder.down.")})
        ch_mult = [weights[f"encoder.down.{level}.block.0.conv2.weight"].shape[0] // ch for level in range(levels)]
        num_res_blocks = len({name.split(".")[4] for name in weights if name.startswith("encoder.down.0.block.")})
    except KeyError as error:
        raise SDMCError(f"{source}: not a kl-f8 style autoencoder (no weight {error.args[0]})") from None
    return {"ch": ch, "ch_mult": ch_mult, "num_res_blocks": num_res_blocks}


def _autoencoder_blocks(levels: int, num_res_blocks: int) -> dict[str, _Block]:
    blocks = {name: _Block(name, _WHOLE) for name in ("quant_conv", "post_quant_conv")}
    for part in ("encoder", "decoder"):
        blocks |= {f"{part}.{name}": _Block(f"{part}.{name}", _WHOLE) for name in ("conv_in", "conv_out")}
        blocks[f"{part}.norm_out"] = _Block(f"{part}.conv_norm_out", _WHOLE)
        blocks[f"{part}.mid.block_1"] = _Block(f"{part}.mid_block.resnets.0", _VAE_RESNET)
        blocks[f"{part}.mid.attn_1"] = _Block(f"{part}.mid_block.attentions.0", _VAE_ATTENTION)
        blocks[f"{part}.mid.block_2"] = _Block(f"{part}.mid_block.resnets.1", _VAE_RESNET)
    for level in range(levels):
        down, up = f"encoder.down_blocks.{level}", f"decoder.up_blocks.{levels - 1 - level}"
        # (LDM numbers decoder levels from the full resolution, diffusers from the deepest.)
        for index in range(num_res_blocks):
            blocks[f"encoder.down.{level}.block.{index}"] = _Block(f"{down}.resnets.{index}", _VAE_RESNET)
        blocks[f"encoder.down.{level}.downsample.conv"] = _Block(f"{down}.downsamplers.0.conv", _WHOLE)
        for index in range(num_res_blocks + 1):
            blocks[f"decoder.up.{level}.block.{index}"] = _Block(f"{up}.resnets.{index}", _VAE_RESNET)
        blocks[f"decoder.up.{level}.upsample.conv"] = _Block(f"{up}.upsamplers.0.conv", _WHOLE)
    return blocks


def _denoiser_blocks(levels: int, num_res_blocks: int, attention: list[bool]) -> dict[str, _Block]:
    """LDM module -> diffusers module, walking the UNet in the order openaimodel builds it."""
    blocks = {
        "time_embed.0": _Block("time_embedding.linear_1", _WHOLE),
        "time_embed.2": _Block("time_embedding.linear_2", _WHOLE),
        "input_blocks.0.0": _Block("conv_in", _WHOLE),
        "middle_block.0": _Block("mid_block.resnets.0", _UNET_RESNET),
        "middle_block.1": _Block("mid_block.attentions.0", _UNET_ATTENTION),
        "middle_block.2": _Block("mid_block.resnets.1", _UNET_RESNET),
        "out.0": _Block("conv_norm_out", _WHOLE), "out.2": _Block("conv_out", _WHOLE),
    }
    index = 1
    for level in range(levels):
        for layer in range(num_res_blocks):
            parts = [_Block(f"down_blocks.{level}.resnets.{layer}", _UNET_RESNET)]
            if attention[level]:
                parts.append(_Block(f"down_blocks.{level}.attentions.{layer}", _UNET_ATTENTION))
            blocks |= {f"input_blocks.{index}.{position}": part for position, part in enumerate(parts)}
            index += 1
        if level < levels - 1:
            blocks[f"input_blocks.{index}.0"] = _Block(f"down_blocks.{level}.downsamplers.0", _UNET_RESNET)
            index += 1
    index = 0
    for up, level in enumerate(reversed(range(levels))):
        for layer in range(num_res_blocks + 1):
            parts = [_Block(f"up_blocks.{up}.resnets.{layer}", _UNET_RESNET)]
            if attention[level]:
                parts.append(_Block(f"up_blocks.{up}.attentions.{layer}", _UNET_ATTENTION))
            if level > 0 and layer == num_res_blocks:
                parts.append(_Block(f"up_blocks.{up}.upsamplers.0", _UNET_RESNET))
            blocks |= {f"output_blocks.{index}.{position}": part for position, part in enumerate(parts)}
            index += 1
    return blocks


def _rename(weights: Mapping[str, torch.Tensor], blocks: Mapping[str, _Block], heads: int) -> _Converted:
    converted = _Converted()
    for name, tensor in weights.items():
        block, layer, parameter = _locate(name, blocks)
        if block is None or layer not in block.layers:
            converted.unplaced.append(name)
            continue
        for diffusers_layer, value in _diffusers_layers(block.layers[layer], tensor, heads).items():
            target = ".".join(part for part in (block.target, diffusers_layer, parameter) if part)
            converted.tensors[target] = value
            converted.origin[target] = name
    return converted


def _locate(name: str, blocks: Mapping[str, _Block]) -> tuple[_Block | None, str, str]:
    """The block `name` belongs to (longest matching prefix), its layer in that block, its parameter."""
    module, _, parameter = name.rpartition(".")
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        block = blocks.get(".".join(parts[:cut]))
        if block is not None:
            return block, ".".join(parts[cut:]), parameter
    return None, "", parameter


def _diffusers_layers(layer: str, tensor: torch.Tensor, heads: int) -> dict[str, torch.Tensor]:
    """The diffusers layer(s) one LDM tensor fills: a fused qkv splits in three."""
    if layer == _FUSED_QKV and tensor.shape[0] % (3 * heads) == 0:
        per_head = tensor.reshape(heads, 3, -1, *tensor.shape[1:])  # rows: [head][q, k, v][channel]
        parts = {name: per_head[:, index].reshape(-1, *tensor.shape[1:])
                 for index, name in enumerate(("to_q", "to_k", "to_v"))}
    else:  # an indivisible qkv keeps its name and is reported as having no place
        parts = {layer: tensor}
    return {name: _as_linear(value) if name in _PROJECTIONS else value for name, value in parts.items()}


def _as_linear(tensor: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution kernel as the matrix of the equivalent linear layer."""
    if tensor.ndim > 2 and all(extent == 1 for extent in tensor.shape[2:]):
        return tensor.reshape(tensor.shape[:2])
    return tensor


def _widen_input(tensors: dict[str, torch.Tensor]) -> None:
    """conv_in of a 4-channel LDM UNet takes [noisy mask latent, image latent]: the new half starts at zero."""
    weight = tensors.get("conv_in.weight")
    if weight is not None and weight.ndim == 4 and weight.shape[1] == LATENT_CHANNELS:
        tensors["conv_in.weight"] = torch.cat([weight, torch.zeros_like(weight)], dim=1)


def _load_exactly(model: torch.nn.Module, converted: _Converted, source: str | Path, what: str) -> None:
    """Load every weight of `model` from `converted`, or raise SDMCError naming what does not fit."""
    own = model.state_dict()
    unplaced = converted.unplaced + [converted.origin[name] for name in converted.tensors if name not in own]
    missing = [name for name in own if name not in converted.tensors]
    mismatched = [f"{converted.origin[name]} {tuple(tensor.shape)} -> {name} {tuple(own[name].shape)}"
                  for name, tensor in converted.tensors.items() if name in own and tensor.shape != own[name].shape]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:_SHOWN_KEYS])}{', ...' if len(keys) > _SHOWN_KEYS else ''}"
                for label, keys in (("checkpoint weights with no place in it", unplaced),
                                    ("its weights the checkpoint lacks", missing), ("shape mismatches", mismatched))
                if keys]
    if problems:
        raise SDMCError(f"{source}: does not fit our {what}: " + "; ".join(problems))
    model.load_state_dict(converted.tensors)


def is_conversion(folder: Path) -> bool:
    """Whether `folder` was written by `convert_checkpoint` (complete: it is renamed into place last)."""
    return (folder / CONVERSION_RECORD).is_file()


def ensure_free_output(destination: Path) -> None:
    """Raise SDMCError unless `destination` is absent or an empty folder (never overwrite other files)."""
    if destination.exists() and not (destination.is_dir() and not any(destination.iterdir())):
        raise SDMCError(f"{destination}: exists and is not a conversion of this checkpoint with these options; "
                        "move it away or choose another output folder")


def convert_checkpoint(checkpoint: Path, destination: Path, kind: str, size: str = "sd") -> bool:
    """Write the diffusers folder `destination` from a CompVis `.ckpt`; False if it already holds that conversion."""
    if not checkpoint.is_file():
        raise SDMCError(f"{checkpoint}: file not found")
    record = {"kind": kind, "source_sha256": sha256(checkpoint)}
    if kind == "unet":
        record |= {"size": size}
    if _previous_conversion(destination) == record:
        logger.info("%s: already converted from %s, skipping", destination, checkpoint)
        return False
    ensure_free_output(destination)
    state_dict = read_compvis_state_dict(checkpoint)
    if kind == "vae":
        model = convert_vae(state_dict, source=checkpoint)
    else:
        model = convert_unet(state_dict, sizes=SDMC_SIZES[size]["denoiser"], source=checkpoint)
    _save_into_place(model, destination, record | {"source": str(checkpoint)})
    logger.info("%s: %s of %d parameters converted from %s", destination, type(model).__name__,
                sum(parameter.numel() for parameter in model.parameters()), checkpoint)
    return True


def _previous_conversion(folder: Path) -> dict:
    """What `folder` was converted from (kind, source hash, options); {} if it is no conversion."""
    if not is_conversion(folder):
        return {}
    record = read_json(folder / CONVERSION_RECORD)
    record.pop("source", None)  # where the file was does not matter, what it held does
    return record


def _save_into_place(model: AutoencoderKL | UNet2DModel, destination: Path, record: dict) -> None:
    """save_pretrained (safetensors) into a staging folder renamed to `destination` when complete."""
    staging = destination.with_name(f".{destination.name}.converting")
    # A staging folder can only be left over from an interrupted run: it is incomplete.
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        model.save_pretrained(staging, safe_serialization=True)
        atomic_write_json(staging / CONVERSION_RECORD, record)
        if destination.exists():  # an empty folder, checked by the caller
            destination.rmdir()
        staging.rename(destination)
    except OSError as error:
        raise SDMCError(f"{destination}: cannot write the converted model ({error.strerror or error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdmc_convert_weights",
        description="Convert a CompVis checkpoint (.ckpt) into a diffusers folder for SDMC-Seg, reading it "
        "without running any code it holds.",
    )
    parser.add_argument("-i", "--input", type=Path, required=True, metavar="CKPT", help="the CompVis checkpoint")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="new folder for the diffusers model (config.json and safetensors weights)")
    parser.add_argument("--kind", choices=KINDS, required=True,
                        help="vae: a kl-f8 autoencoder (SD first stage, the fine-tuned mask encoder); "
                        "unet: an LDM denoiser such as lsun_churches256")
    parser.add_argument("--size", choices=list(SDMC_SIZES), default="sd",
                        help="denoiser size preset the UNet was built with (default: %(default)s, the LDM "
                        "churches layout); an autoencoder's sizes are read from its weights")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    return parser


@console_entry
def main(argv: list[str] | None = None) -> int:
    """Command line: convert `-i CKPT` into the diffusers folder `-o DIR`."""
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    if convert_checkpoint(args.input, args.output, args.kind, args.size):
        print(f"{args.output}: {args.kind} converted from {args.input}")
    else:
        print(f"{args.output}: already holds the {args.kind} converted from {args.input}; nothing to do")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
