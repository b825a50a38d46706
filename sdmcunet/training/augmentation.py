"""Training augmentation for 2D head CT slices (batchgenerators transforms).

Rotations stay small: head CT slices come in a consistent orientation. Mirroring is left-right
only (the brain is nearly symmetric about the midline, not top-bottom). Intensity transforms
assume inputs normalised to about [0, 1].
"""

import numpy as np
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform, ContrastAugmentationTransform, GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import NumpyToTensor


def training_transforms(image_size: list[int], elastic: bool = True) -> Compose:
    return Compose([
        SpatialTransform(
            patch_size=tuple(image_size), patch_center_dist_from_border=None, random_crop=False,
            do_elastic_deform=elastic, alpha=(0.0, 200.0), sigma=(9.0, 13.0), p_el_per_sample=0.2,
            do_rotation=True, angle_x=(-np.pi / 12, np.pi / 12), p_rot_per_sample=0.3,
            do_scale=True, scale=(0.85, 1.25), p_scale_per_sample=0.3,
            border_mode_data="constant", border_cval_data=0, order_data=1, border_mode_seg="constant",
            border_cval_seg=0, order_seg=0,
        ),
        MirrorTransform(axes=(1,)),
        GaussianNoiseTransform(noise_variance=(0.0, 0.002), p_per_sample=0.15),
        GaussianBlurTransform(blur_sigma=(0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(contrast_range=(0.75, 1.25), p_per_sample=0.15),
        GammaTransform(gamma_range=(0.7, 1.5), retain_stats=True, p_per_sample=0.3),
        NumpyToTensor(keys=["data", "seg"], cast_to="float"),
    ])


def validation_transforms() -> Compose:
    return Compose([NumpyToTensor(keys=["data", "seg"], cast_to="float")])
