"""The SDMC-Seg parts (docs/design.md §5) as diffusers models, built from plan sizes.

Sizes use the vocabulary of the LDM configs (model_channels, channel_mult, ...), so the
published "sd" plan reads like the paper's config; these builders translate to diffusers.

Attention heads. The LDM UNet runs `num_heads` heads in every attention block, whatever the
block's width; diffusers' UNet2DModel takes one head *width* (`attention_head_dim`) for all
blocks. When every attention block of a plan has the same head width, the saved config says so
and plain `UNet2DModel.from_pretrained` rebuilds the exact network. When they differ (the
published UNet: 8 heads on 192, 384 and 768 channels) no UNet2DModel config can express it: the
head count is then saved as the extra config field `ldm_num_heads`, which `load_denoiser` honours
(diffusers alone warns that it ignores the field and builds more, narrower heads).
"""

import logging
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DModel
from diffusers.models.attention_processor import Attention

LATENT_CHANNELS = 4
DOWNSAMPLING_FACTOR = 8
HEADS_CONFIG_FIELD = "ldm_num_heads"


def build_autoencoder(sizes: dict) -> AutoencoderKL:
    """The "kl-f8" first stage: 3-channel images <-> 4 x H/8 x W/8 latents."""
    block_out_channels = tuple(sizes["ch"] * multiplier for multiplier in sizes["ch_mult"])
    if len(block_out_channels) != 4:
        raise ValueError("ch_mult needs four levels for the factor-8 autoencoder")
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=block_out_channels, layers_per_block=sizes["num_res_blocks"],
        latent_channels=LATENT_CHANNELS, norm_num_groups=min(32, block_out_channels[0]),
    )


def attention_levels(sizes: dict) -> list[bool]:
    """Which UNet levels have attention: as in LDM, those whose downsampling rate (1, 2, 4, ...) is listed
    in `attention_resolutions`, whatever the latent size."""
    return [2**level in sizes["attention_resolutions"] for level in range(len(sizes["channel_mult"]))]


def latent_multiple(sizes: dict) -> int:
    """The UNet downsamples len(channel_mult) - 1 times: latent sides it runs on unpadded are multiples of this."""
    return 2 ** (len(sizes["channel_mult"]) - 1)


def padded_latent_size(sizes: dict, latent_size: int) -> int:
    """The latent side the UNet computes on: `latent_size` rounded up to `latent_multiple`."""
    multiple = latent_multiple(sizes)
    return -(-latent_size // multiple) * multiple


def _head_widths(sizes: dict) -> set[int]:
    """LDM's head width (channels / num_heads) of every attention block, the mid block's included."""
    channels = [sizes["model_channels"] * multiplier for multiplier in sizes["channel_mult"]]
    with_attention = [width for width, attention in zip(channels, attention_levels(sizes)) if attention]
    return {width // sizes["num_heads"] for width in [*with_attention, channels[-1]]}


def build_denoiser(sizes: dict, latent_size: int | tuple[int, int]) -> UNet2DModel:
    """The LDM UNet: input concat(noisy mask latent, image latent) = 8 channels, output 4.

    Matches the LDM openaimodel layout, so that LDM checkpoints convert weight for weight and
    compute what they computed there: ResBlock resampling at every level (`Resnet*sample` blocks
    where a level has no attention), GroupNorm before the mid-block attention, scale-shift time
    conditioning, attention placed by downsampling rate, and `num_heads` heads in every attention
    block. `latent_size` is recorded as the config's `sample_size`; the structure does not depend on it.
    """
    channels = tuple(sizes["model_channels"] * multiplier for multiplier in sizes["channel_mult"])
    attention = attention_levels(sizes)
    head_widths = _head_widths(sizes)
    norm_groups = min(32, channels[0])
    denoiser = UNet2DModel(
        sample_size=latent_size, in_channels=2 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=channels, layers_per_block=sizes["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attention)),
        attention_head_dim=min(head_widths),  # divides every block's width: to_q/k/v stay square
        resnet_time_scale_shift="scale_shift", downsample_type="resnet", upsample_type="resnet",
        dropout=sizes["dropout"], norm_num_groups=norm_groups, attn_norm_num_groups=norm_groups,
    )
    if len(head_widths) > 1:  # diffusers cannot say this in its config: set per block, and record it
        set_attention_heads(denoiser, sizes["num_heads"])
        denoiser.register_to_config(**{HEADS_CONFIG_FIELD: sizes["num_heads"]})
    return denoiser


def set_attention_heads(denoiser: UNet2DModel, num_heads: int) -> None:
    """`num_heads` heads in every attention block (LDM's layout), whatever its width."""
    for block in denoiser.modules():
        if isinstance(block, Attention):
            block.heads = num_heads
            block.scale = (block.inner_dim // num_heads) ** -0.5


def load_denoiser(folder: Path) -> UNet2DModel:
    """A denoiser saved with `save_pretrained`, with LDM's per-block head count where its config records one."""
    num_heads = UNet2DModel.load_config(folder).get(HEADS_CONFIG_FIELD)
    # diffusers warns that it ignores the field we honour here
    config_log = logging.getLogger("diffusers.configuration_utils")
    level = config_log.level
    config_log.setLevel(logging.ERROR)
    try:
        denoiser = UNet2DModel.from_pretrained(folder, local_files_only=True)
    finally:
        config_log.setLevel(level)
    if num_heads is not None:
        set_attention_heads(denoiser, int(num_heads))
        denoiser.register_to_config(**{HEADS_CONFIG_FIELD: int(num_heads)})
    return denoiser
