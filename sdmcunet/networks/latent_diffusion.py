"""The SDMC-Seg parts (DESIGN §5) as diffusers models, built from plan sizes.

Sizes use the vocabulary of the LDM configs (model_channels, channel_mult, ...), so the
published "sd" plan reads like the paper's config; these builders translate to diffusers.
"""

from diffusers import AutoencoderKL, UNet2DModel

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

    diffusers' UNet2DModel takes one attention head width for all levels; it is set to
    model_channels / num_heads, so the first level has `num_heads` heads and deeper, wider
    levels proportionally more.
    """
    channels = tuple(sizes["model_channels"] * multiplier for multiplier in sizes["channel_mult"])
    resolutions = [latent_size // 2**level for level in range(len(channels))]
    attention = [resolution in sizes["attention_resolutions"] for resolution in resolutions]
    return UNet2DModel(
        sample_size=latent_size, in_channels=2 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=channels, layers_per_block=sizes["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        attention_head_dim=max(1, sizes["model_channels"] // sizes["num_heads"]),
        resnet_time_scale_shift="scale_shift", downsample_type="resnet", upsample_type="resnet",
        dropout=sizes["dropout"], norm_num_groups=min(32, channels[0]),
    )
