"""Fine-tuning the kl-f8 autoencoder on the dataset's lesion masks (the "fine-tuned mask encoder").

Loss: L1 between the decoded and the input colour image, KL of the posterior (weight 1e-6),
and a soft Dice term on the decoded class channels, so that reconstructed label maps, not only
colours, are right. The published perceptual (LPIPS) and adversarial terms need VGG weights
and a patch discriminator; they are not implemented in this version (their plan weights must be
0). The checkpoint with the best reconstruction Dice is kept as `checkpoint_best`.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sdmcunet.evaluation.metrics import summarise_cases, write_summary
from sdmcunet.networks.sdmc import MaskAutoencoder, colour_image_to_probabilities, mask_to_colour_image
from sdmcunet.training.data_loading import PreprocessedCases
from sdmcunet.training.mask_autoencoder_source import load_state_checked
from sdmcunet.training.trainers.base import Trainer
from sdmcunet.utils.errors import SDMCError


class MaskAutoencoderTrainer(Trainer):
    family = "mask_autoencoder"

    def build_network(self) -> nn.Module:
        weights = self.settings["loss_weights"]
        if weights.get("perceptual") or weights.get("adversarial"):
            raise SDMCError("the perceptual and adversarial loss terms are not implemented; set their "
                            "loss_weights to 0 in the plans")
        return MaskAutoencoder(self.settings["networks"]["autoencoder"])

    def load_initial_weights(self, network: nn.Module) -> None:
        pretrained = self.settings["networks"]["autoencoder"].get("pretrained")
        if pretrained:
            from sdmcunet.weights.download import load_pretrained_autoencoder

            load_state_checked(network.autoencoder, load_pretrained_autoencoder(pretrained).state_dict(), pretrained)

    def started_from_pretrained(self) -> bool:
        return bool(self.settings["networks"]["autoencoder"].get("pretrained"))

    def training_case_ids(self, train_cases: list[str]) -> list[str]:
        """Lesion slices only: an all-background mask teaches the autoencoder nothing."""
        cases = PreprocessedCases(self.preprocessed_folder / self.config["data_identifier"], train_cases)
        lesion_cases = [case for case in train_cases if cases.properties[case]["class_locations"]]
        if not lesion_cases:
            raise SDMCError(f"fold {self.fold} has no training slice with a lesion to fine-tune the mask autoencoder on")
        return lesion_cases

    def compute_loss(self, batch: dict) -> torch.Tensor:
        labels = batch["seg"][:, 0]
        decoded, kl = self.network(labels)
        target = mask_to_colour_image(labels)
        weights = self.settings["loss_weights"]
        return weights["l1"] * F.l1_loss(decoded, target) + weights["kl"] * kl + weights["dice"] * _soft_dice_loss(decoded, target)

    def validation_prediction(self, batch: dict) -> torch.Tensor:
        decoded, _ = self.network(batch["seg"][:, 0], sample=False)
        return decoded.argmax(1)

    @torch.no_grad()
    def final_validation(self, save_probabilities: bool = False) -> Path:
        """Reconstruction quality on the fold's validation lesion slices (network geometry)."""
        _, val_cases = self.split()
        folder = self.preprocessed_folder / self.config["data_identifier"]
        cases = PreprocessedCases(folder, val_cases)
        self.network.eval()
        scored = {}
        for case in (c for c in val_cases if cases.properties[c]["class_locations"]):
            labels = torch.from_numpy(np.asarray(cases.labels(case))[None].astype(np.int64)).to(self.device)
            reconstruction = self.validation_prediction({"seg": labels[:, None].float()})[0]
            scored[case] = (reconstruction.cpu().numpy().astype(np.uint8), np.asarray(cases.labels(case)), (1.0, 1.0))
        output = self.output_folder / "validation"
        output.mkdir(parents=True, exist_ok=True)
        summary = summarise_cases(scored) if scored else {"note": "no validation slice with a lesion"}
        summary["what"] = "reconstruction of the validation lesion masks by the mask autoencoder (network geometry)"
        write_summary(output / "summary.json", summary)
        return output / "summary.json"


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
