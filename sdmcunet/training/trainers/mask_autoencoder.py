"""Fine-tuning the kl-f8 autoencoder on the dataset's lesion masks (the "fine-tuned mask encoder").

Loss: L1 between the decoded and the input colour image, KL of the posterior (weight 1e-6),
and a soft Dice term on the decoded class channels, so that reconstructed label maps, not only
colours, are right. The published perceptual (LPIPS) and adversarial terms need VGG weights
and a patch discriminator; they are not implemented in this version (their plan weights must be
0). The checkpoint with the best reconstruction Dice is kept as `checkpoint_best`.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sdmcunet.experiment_planning.plans import MASK_AUTOENCODER_FAMILY
from sdmcunet.experiment_planning.plans_manager import ConfigurationManager
from sdmcunet.networks.sdmc import MaskAutoencoder, colour_image_to_probabilities, mask_to_colour_image
from sdmcunet.preprocessing.preprocessed_cases import PreprocessedCases
from sdmcunet.results.checkpoints import load_state_checked
from sdmcunet.training.trainers.base import Trainer
from sdmcunet.utils.errors import SDMCError


class MaskAutoencoderTrainer(Trainer):
    family = MASK_AUTOENCODER_FAMILY

    @classmethod
    def build_network_architecture(cls, configuration: ConfigurationManager) -> nn.Module:
        return MaskAutoencoder(configuration.family(cls.family).networks["autoencoder"])

    def initialize(self, initial_weights: bool = True) -> None:
        weights = self.family_settings.loss_weights
        if weights.get("perceptual") or weights.get("adversarial"):
            raise SDMCError("the perceptual and adversarial loss terms are not implemented; set their "
                            "loss_weights to 0 in the plans")
        super().initialize(initial_weights)

    def load_initial_weights(self, network: nn.Module) -> None:
        pretrained = self.family_settings.networks["autoencoder"].get("pretrained")
        if pretrained:
            from sdmcunet.weights.download import load_pretrained_autoencoder

            load_state_checked(network.autoencoder, load_pretrained_autoencoder(pretrained).state_dict(), pretrained)

    def started_from_pretrained(self) -> bool:
        return bool(self.family_settings.networks["autoencoder"].get("pretrained"))

    def training_case_ids(self, train_cases: list[str]) -> list[str]:
        """Lesion slices only: an all-background mask teaches the autoencoder nothing."""
        cases = PreprocessedCases(self.preprocessed_folder / self.configuration.data_identifier, train_cases)
        lesion_cases = _lesion_cases(cases)
        if not lesion_cases:
            raise SDMCError(f"fold {self.fold} has no training slice with a lesion to fine-tune the mask autoencoder on")
        return lesion_cases

    def compute_loss(self, batch: dict) -> torch.Tensor:
        labels = batch["seg"][:, 0]
        decoded, kl = self.network(labels)
        target = mask_to_colour_image(labels)
        weights = self.family_settings.loss_weights
        return weights["l1"] * F.l1_loss(decoded, target) + weights["kl"] * kl + weights["dice"] * _soft_dice_loss(decoded, target)

    def validation_prediction(self, batch: dict) -> torch.Tensor:
        decoded, _ = self.network(batch["seg"][:, 0], sample=False)
        return decoded.argmax(1)

    def validation_case_ids(self, cases: PreprocessedCases) -> list[str]:
        """The lesion slices: the autoencoder reconstructs masks, and a mask without a lesion tests nothing."""
        return _lesion_cases(cases)

    def validation_probabilities(self, cases: PreprocessedCases, names: list[str]) -> np.ndarray:
        """The reconstructed masks (posterior mode) as class probabilities, as SDMC-Seg reads its decoded masks."""
        labels = torch.from_numpy(np.stack([cases.labels(name) for name in names]).astype(np.int64)).to(self.device)
        decoded, _ = self.network(labels, sample=False)
        return colour_image_to_probabilities(decoded).float().cpu().numpy()

    def validation_description(self) -> str:
        return "reconstruction of the validation lesion masks by the mask autoencoder (mapped back to the slices)"


def _lesion_cases(cases: PreprocessedCases) -> list[str]:
    return [case for case in cases.case_ids if cases.properties[case]["class_locations"]]


def _soft_dice_loss(decoded: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per slice and class, averaged over the classes each slice holds.

    Per slice, as the Stroke2021 protocol scores: a small lesion counts as much as a large one
    (a Dice over the whole batch would let the large lesions drown it).
    """
    # the softmax inference uses: clipping gave no gradient to a lesion decoded with every channel below -1
    probabilities = colour_image_to_probabilities(decoded)
    one_hot = (target + 1) / 2
    intersection = (probabilities * one_hot).sum(dim=(2, 3))
    reference = one_hot.sum(dim=(2, 3))
    dice = 2 * intersection / (probabilities.sum(dim=(2, 3)) + reference + 1e-6)
    present = reference > 0
    return 1 - dice[present].mean()
