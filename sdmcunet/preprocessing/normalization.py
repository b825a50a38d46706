"""Raw channels -> network input channels, as the plans' `input_channels` say."""

import numpy as np

from sdmcunet.experiment_planning.plans_manager import InputChannel

EPSILON = 1e-8


def normalise(raw_channels: np.ndarray, input_channels: list[InputChannel]) -> np.ndarray:
    """(raw channels, H, W) -> (input channels, H, W) float32.

    `min_max_per_image` scales each image to [0, 1] (the published SDMC input), `window`
    clips to [low, high] and scales to [0, 1], `z_score` subtracts the plan's mean and divides
    by its std (nnU-Net's CT normalisation when the window is the fingerprint's percentiles).
    """
    return np.stack([_normalise_one(raw_channels[spec.source_channel].astype(np.float32), spec)
                     for spec in input_channels])


def _normalise_one(channel: np.ndarray, spec: InputChannel) -> np.ndarray:
    scheme = spec.normalization
    if scheme == "min_max_per_image":
        low, high = float(channel.min()), float(channel.max())
        return (channel - low) / max(high - low, EPSILON)
    if scheme == "window":
        low, high = spec.window
        return (np.clip(channel, low, high) - low) / (high - low)
    if scheme == "z_score":
        if spec.window is not None:
            channel = np.clip(channel, *spec.window)
        return (channel - spec.mean) / spec.std
    raise ValueError(f"unknown normalization {scheme!r}")
