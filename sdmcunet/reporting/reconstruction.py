"""The mask reconstruction comparison (as in the published figure): a reference mask, its
reconstruction by the pretrained mask autoencoder and by the fine-tuned one.

Pretrained: the frozen mask autoencoder inside an SDMCPretrainedTrainer checkpoint, else the
plans' starting point (the published weights they name). Fine-tuned: the MaskAutoencoderTrainer
checkpoint. Both run on the CPU, on reference masks of the fine-tuned model's validation slices
at the plans' image size (the preprocessed label maps, as the autoencoders see them).
"""

from dataclasses import dataclass

import numpy as np
import torch

from sdmcunet.evaluation.metrics import nanmean, slice_scores
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC
from sdmcunet.experiment_planning.plans import MASK_AUTOENCODER_FAMILY, SDMC_FAMILY
from sdmcunet.results.checkpoints import load_checkpoint, load_state_checked, network_weights, sub_state
from sdmcunet.results.layout import FINGERPRINT_FILE
from sdmcunet.results.splits import fold_cases
from sdmcunet.results.trained_model import FoldResult
from sdmcunet.networks.sdmc import AUTOENCODER, MASK_AUTOENCODER, MaskAutoencoder
from sdmcunet.reporting.collect import Results
from sdmcunet.reporting.document import Figure, Section
from sdmcunet.reporting.figures import image_grid, overlay
from sdmcunet.reporting.qualitative import LESION_CATEGORIES, choose_slices, class_areas
from sdmcunet.reporting.tables import folds_cell, lesion_mean, model_cell
from sdmcunet.preprocessing.preprocessed_cases import PreprocessedCases
from sdmcunet.training.trainers import MASK_AUTOENCODER_TRAINER
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json

PRETRAINED_TRAINER = "SDMCPretrainedTrainer"


@dataclass
class LoadedAutoencoder:
    network: MaskAutoencoder
    source: str  # where the weights came from, for the caption


def _mask_autoencoder(sizes: dict, weights: dict[str, torch.Tensor], source) -> MaskAutoencoder:
    """A MaskAutoencoder holding the autoencoder `weights`."""
    network = MaskAutoencoder(sizes)
    load_state_checked(network.autoencoder, weights, source)
    return network.eval()


def pretrained_autoencoder(results: Results) -> LoadedAutoencoder:
    model = results.models.get(PRETRAINED_TRAINER)
    if model is not None:
        fold = model.finished_folds()[0]
        sizes = model.plans.configuration(results.configuration).family(SDMC_FAMILY).networks["autoencoder"]
        state = network_weights(load_checkpoint(fold.checkpoint, PRETRAINED_TRAINER, mmap=True), fold.folder)
        origin = (f"the plans' {sizes['pretrained']} weights" if sizes.get("pretrained")
                  else "a random initialisation, as the plans name no pretrained weights")
        return LoadedAutoencoder(_mask_autoencoder(sizes, sub_state(state, MASK_AUTOENCODER), fold.checkpoint),
                                 f"the frozen mask autoencoder of {PRETRAINED_TRAINER} fold {fold.name}, {origin}")
    sizes = results.plans.configuration(results.configuration).family(MASK_AUTOENCODER_FAMILY).networks["autoencoder"]
    if not sizes.get("pretrained"):
        raise SDMCError(f"no {PRETRAINED_TRAINER} model is trained and the plans start the mask autoencoder from "
                        f"random weights, so there is no pretrained mask autoencoder to compare with")
    from sdmcunet.weights.download import load_pretrained_autoencoder

    state = load_pretrained_autoencoder(sizes["pretrained"]).state_dict()
    return LoadedAutoencoder(_mask_autoencoder(sizes, state, sizes["pretrained"]),
                             f"the plans' starting point, the {sizes['pretrained']} weights")


def fine_tuned_autoencoder(results: Results) -> tuple[LoadedAutoencoder, FoldResult]:
    model = results.models.get(MASK_AUTOENCODER_TRAINER)
    if model is None:
        raise SDMCError(f"no {MASK_AUTOENCODER_TRAINER} model is trained (train it with `sdmc_train "
                        f"{results.dataset_id} {results.configuration} 0 -tr {MASK_AUTOENCODER_TRAINER}`)")
    fold = model.finished_folds()[0]
    sizes = model.plans.configuration(results.configuration).family(MASK_AUTOENCODER_FAMILY).networks["autoencoder"]
    state = load_checkpoint(fold.checkpoint, MASK_AUTOENCODER_TRAINER, mmap=True)["network"]
    network = _mask_autoencoder(sizes, sub_state(state, AUTOENCODER), fold.checkpoint)
    return LoadedAutoencoder(network, f"{MASK_AUTOENCODER_TRAINER} fold {fold.name}"), fold


def reference_masks(results: Results, fold: FoldResult) -> dict[str, np.ndarray]:
    """A few lesion masks the fine-tuned autoencoder did not train on (fold 'all': trained on all), by row title."""
    preprocessed = results.preprocessed_folder
    if preprocessed is None:
        raise SDMCError(f"the preprocessed dataset {results.dataset_id} (reference masks at the plans' image size) "
                        f"is not in the SDMC_preprocessed folder")
    if fold.is_cross_validation:
        cases = fold_cases(preprocessed, int(fold.name))["val"]
    else:
        cases = read_json(preprocessed / FINGERPRINT_FILE)["cases"]
    data = PreprocessedCases(preprocessed / results.plans.configuration(results.configuration).data_identifier, cases)
    chosen = choose_slices({case: class_areas(data.labels(case)) for case in cases}, LESION_CATEGORIES)
    if not chosen:
        raise SDMCError(f"fold {fold.name} has no validation slice with a lesion")
    return {f"{case} ({category})": np.asarray(data.labels(case), dtype=np.uint8) for case, category in chosen}


@torch.no_grad()
def reconstruct(network: MaskAutoencoder, label_map: np.ndarray) -> np.ndarray:
    """The label map decoded from the posterior mode (as the fine-tuning's validation does)."""
    decoded, _ = network(torch.from_numpy(label_map.astype(np.int64))[None], sample=False)
    return decoded.argmax(1)[0].numpy().astype(np.uint8)


def lesion_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Mean DSC over the lesion classes present in the reference (the protocol's Mean for one slice)."""
    return nanmean(slice_scores(prediction, reference)["DSC"][[ISCHEMIC, HEMORRHAGIC]])


def reconstruction_section(results: Results) -> Section:
    section = Section("Mask reconstruction: pretrained and fine-tuned mask autoencoder")
    fine_tuned_model = results.models.get(MASK_AUTOENCODER_TRAINER)
    if fine_tuned_model is not None:
        section.blocks.append(
            f"{MASK_AUTOENCODER_TRAINER} validation reconstruction DSC (mean of IS, HS, at the plans' image size): "
            f"{model_cell(fine_tuned_model, lesion_mean('DSC'))} (evaluated folds: {folds_cell(fine_tuned_model)}). "
            f"It scores reconstructions of reference masks, not segmentations, so it is not in the tables above.")
    try:
        fine_tuned, fold = fine_tuned_autoencoder(results)
        pretrained = pretrained_autoencoder(results)
        masks = reference_masks(results, fold)
    except SDMCError as reason:
        section.blocks.append(f"The reconstruction comparison is left out: {reason}.")
        return section
    panels, notes = [], []
    for reference in masks.values():
        reconstructions = [reconstruct(loaded.network, reference) for loaded in (pretrained, fine_tuned)]
        panels.append([overlay(None, label_map) for label_map in (reference, *reconstructions)])
        notes.append(["", *(f"DSC {lesion_dice(label_map, reference):.3f}" for label_map in reconstructions)])
    caption = (f"Reference masks of fold {fold.name} at the plans' image size, reconstructed (posterior mode, argmax "
               f"over the class channels) by the pretrained and the fine-tuned mask autoencoder; DSC: mean over the "
               f"lesion classes present. Pretrained: {pretrained.source}. Fine-tuned: {fine_tuned.source}.")
    png = image_grid(panels, ["reference mask", "pretrained VAE", "fine-tuned VAE"], list(masks), notes,
                     mask_pictures=True)
    section.blocks.append(Figure("mask_reconstruction", png, caption))
    return section
