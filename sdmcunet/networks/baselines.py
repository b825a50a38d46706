"""The four baseline segmentation networks (docs/design.md §6), built from MONAI with plan sizes."""

from pathlib import Path
from typing import Callable

from torch import nn

from sdmcunet.utils.errors import SDMCError


def _unet(in_channels: int, num_classes: int, features: list[int]) -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, features=tuple(features))


def _resunet34(in_channels: int, num_classes: int, decoder_channels: list[int],
               encoder_weights: str | None = None) -> nn.Module:
    """`encoder_weights` (a local file) is loaded by the trainer with `load_encoder_weights`."""
    from monai.networks.nets import FlexibleUNet

    # pretrained=False: MONAI would download; pretrained weights come from a local file instead
    return FlexibleUNet(in_channels, num_classes, backbone="resnet34", pretrained=False,
                        decoder_channels=tuple(decoder_channels), spatial_dims=2)


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load ResNet-34 weights (torchvision key layout, e.g. ImageNet) from a local file.

    The classifier (`fc.*`) is dropped; a first convolution trained on RGB is summed over its
    input channels when the network takes another number of channels.
    """
    from sdmcunet.utils.safe_load import load_tensor_dict

    weights = {key.removeprefix("module.").removeprefix("encoder."): value
               for key, value in load_tensor_dict(path).items() if not key.startswith("fc.")}
    own = encoder.state_dict()
    if "conv1.weight" in weights and weights["conv1.weight"].shape[1] != own["conv1.weight"].shape[1]:
        summed = weights["conv1.weight"].sum(dim=1, keepdim=True)
        weights["conv1.weight"] = summed.repeat(1, own["conv1.weight"].shape[1], 1, 1) / own["conv1.weight"].shape[1]
    mismatched = [key for key, value in weights.items() if key in own and own[key].shape != value.shape]
    unknown = [key for key in weights if key not in own]
    if mismatched or unknown or not weights:
        raise SDMCError(f"{path}: not ResNet-34 encoder weights; mismatched shapes: {mismatched[:5]}, "
                        f"unknown keys: {unknown[:5]}")
    encoder.load_state_dict(weights, strict=False)


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
