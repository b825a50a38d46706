"""The SDMC-Seg parts (DESIGN §5) as diffusers models, built from plan sizes.

Sizes use the vocabulary of the LDM configs (model_channels, channel_mult, ...), so the
published "sd" plan reads like the paper's config; these builders translate to diffusers.
"""

from diffusers import AutoencoderKL, UNet2DModel
from diffusers.models.attention_processor import Attention

LATENT_CHANNELS = 4
DOWNSAMPLING_FACTOR = 8


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


def build_denoiser(sizes: dict, latent_size: int) -> UNet2DModel:
    """The LDM UNet: input concat(noisy mask latent, image latent) = 8 channels, output 4.

    Matches the LDM openaimodel layout, so that LDM checkpoints convert weight for weight:
    ResBlock resampling at every level (`Resnet*sample` blocks where a level has no
    attention), GroupNorm before the mid-block attention, scale-shift time conditioning, and
    `num_heads` heads in every attention block (diffusers takes one head width for all
    blocks, so the head count is set on each block after building).
    """
    channels = tuple(sizes["model_channels"] * multiplier for multiplier in sizes["channel_mult"])
    resolutions = [latent_size // 2**level for level in range(len(channels))]
    attention = [resolution in sizes["attention_resolutions"] for resolution in resolutions]
    norm_groups = min(32, channels[0])
    denoiser = UNet2DModel(
        sample_size=latent_size, in_channels=2 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=channels, layers_per_block=sizes["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attention)),
        attention_head_dim=max(1, sizes["model_channels"] // sizes["num_heads"]),
        resnet_time_scale_shift="scale_shift", downsample_type="resnet", upsample_type="resnet",
        dropout=sizes["dropout"], norm_num_groups=norm_groups, attn_norm_num_groups=norm_groups,
    )
    for block in denoiser.modules():
        if isinstance(block, Attention):
            block.heads = sizes["num_heads"]
            block.scale = (block.inner_dim // sizes["num_heads"]) ** -0.5
    return denoiser
