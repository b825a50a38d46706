"""The trainer registry: built-in trainers by name, plus users' own.

Users add trainers without editing the package: a `sdmcunet.trainers` entry point in their
package (`MyTrainer = mypackage.trainers:MyTrainer`), or `-tr mypackage.trainers:MyTrainer`.
`nnUNetTrainer` delegates to nnU-Net v2 (optional; see trainers/nnunet.py).
"""

from sdmcunet.training.mask_autoencoder_source import MASK_AUTOENCODER_TRAINER
from sdmcunet.training.trainers.base import Trainer
from sdmcunet.training.trainers.baselines import ResUNet34Trainer, SegResNetTrainer, SwinUNETRTrainer, UNetTrainer
from sdmcunet.training.trainers.mask_autoencoder import MaskAutoencoderTrainer
from sdmcunet.training.trainers.nnunet import nnUNetTrainer
from sdmcunet.training.trainers.sdmc import SDMCFinetunedFrozenTrainer, SDMCFinetunedTrainer, SDMCPretrainedTrainer
from sdmcunet.utils.registry import Registry

TRAINERS: Registry[Trainer] = Registry("trainer", "sdmcunet.trainers", Trainer)
for _trainer in (UNetTrainer, ResUNet34Trainer, SegResNetTrainer, SwinUNETRTrainer, MaskAutoencoderTrainer,
                 SDMCFinetunedTrainer, SDMCPretrainedTrainer, SDMCFinetunedFrozenTrainer, nnUNetTrainer):
    TRAINERS.register(_trainer)

__all__ = ["MASK_AUTOENCODER_TRAINER", "TRAINERS", "Trainer", "nnUNetTrainer"]
