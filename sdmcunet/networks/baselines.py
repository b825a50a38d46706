"""The four baseline segmentation networks (DESIGN §6), built from MONAI with plan sizes."""

from typing import Callable

from torch import nn

from sdmcunet.utils.errors import SDMCError


def _unet(in_channels: int, num_classes: int, features: list[int]) -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, features=tuple(features))


def _resunet34(in_channels: int, num_classes: int, decoder_channels: list[int]) -> nn.Module:
    from monai.networks.nets import FlexibleUNet

    # pretrained=False: weights are loaded from a local file by the trainer, never downloaded
    return FlexibleUNet(in_channels, num_classes, backbone="resnet34", pretrained=False,
                        decoder_channels=tuple(decoder_channels), spatial_dims=2)


def _segresnet(in_channels: int, num_classes: int, init_filters: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=2, init_filters=init_filters, in_channels=in_channels, out_channels=num_classes)


def _swin_unetr(in_channels: int, num_classes: int, feature_size: int) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=in_channels, out_channels=num_classes, feature_size=feature_size, spatial_dims=2)


BASELINE_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "UNet": _unet, "ResUNet34": _resunet34, "SegResNet": _segresnet, "SwinUNETR": _swin_unetr,
}


def build_baseline(name: str, sizes: dict, in_channels: int, num_classes: int) -> nn.Module:
    """`sizes` is the plans entry `families.baseline.networks[name]`."""
    if name not in BASELINE_BUILDERS:
        raise SDMCError(f"unknown baseline network {name!r}; known: {', '.join(BASELINE_BUILDERS)}")
    try:
        return BASELINE_BUILDERS[name](in_channels, num_classes, **sizes)
    except TypeError as error:
        raise SDMCError(f"plans give {name} sizes {sizes} that it does not take ({error})") from None
