"""Where SDMC's mask autoencoder (and other pretrained parts) come from, checked before use."""

from pathlib import Path

import torch
from torch import nn

from sdmcunet.experiment_planning.plans_manager import PlansManager
from sdmcunet.networks.sdmc import AUTOENCODER
from sdmcunet.results.checkpoints import load_checkpoint, load_state_checked, sub_state
from sdmcunet.results.layout import FINAL_CHECKPOINT, fold_folder, model_folder
from sdmcunet.utils.errors import SDMCError

MASK_AUTOENCODER_TRAINER = "MaskAutoencoderTrainer"


def pretrained_sets(networks: dict) -> dict[str, str]:
    """Name -> kind ("vae", "unet") of the published weights the plans' networks start from."""
    kinds = {"autoencoder": "vae", "denoiser": "unet"}
    return {networks[part]["pretrained"]: kind for part, kind in kinds.items()
            if part in networks and networks[part].get("pretrained")}


def raise_if_weights_missing(trainer, fine_tuned: bool) -> None:
    """One error listing every set of initial weights that is missing (pretrained and fine-tuned alike)."""
    from sdmcunet.weights.download import missing_pretrained

    missing = missing_pretrained(pretrained_sets(trainer.family_settings.networks))
    if fine_tuned and not fine_tuned_source(trainer).exists():
        missing.append(_how_to_fine_tune(trainer))
    if missing:
        raise SDMCError(f"{type(trainer).__name__} cannot start: {len(missing)} set(s) of initial weights missing:\n  "
                        + "\n  ".join(missing))


def load_pretrained_parts(model: nn.Module, networks: dict) -> None:
    """Load the published weights the plans name (SD VAE, LDM UNet)."""
    vae_name = networks["autoencoder"].get("pretrained")
    if vae_name:
        from sdmcunet.weights.download import load_pretrained_autoencoder

        vae = load_pretrained_autoencoder(vae_name)
        load_state_checked(model.mask_autoencoder, vae.state_dict(), vae_name)
        load_state_checked(model.image_encoder.encoder, vae.encoder.state_dict(), vae_name)
    unet_name = networks["denoiser"].get("pretrained")
    if unet_name:
        from sdmcunet.weights.download import load_pretrained_denoiser

        load_state_checked(model.denoiser, load_pretrained_denoiser(unet_name).state_dict(), unet_name)


def fine_tuned_source(trainer) -> Path:
    """The fine-tuned mask autoencoder given on the command line, else the one trained for this fold."""
    path = trainer.options.get("mask_autoencoder")
    if path is not None:
        return Path(path)
    folder = model_folder(trainer.plans.dataset_name, MASK_AUTOENCODER_TRAINER, trainer.plans.plans_name,
                          trainer.configuration_name)
    return fold_folder(folder, trainer.fold) / FINAL_CHECKPOINT


def _how_to_fine_tune(trainer) -> str:
    given = trainer.options.get("mask_autoencoder")
    if given is not None:
        return f"{given}: not found (the fine-tuned mask autoencoder given with -mask_autoencoder)"
    dataset_id = trainer.plans.dataset_name.split("_")[0].removeprefix("Dataset")
    return (f"{fine_tuned_source(trainer)}: no fine-tuned mask autoencoder for fold {trainer.fold}; train it with "
            f"`sdmc_train {dataset_id} {trainer.configuration_name} {trainer.fold} -tr {MASK_AUTOENCODER_TRAINER}`, "
            f"or give one with -mask_autoencoder FILE")


def load_fine_tuned(mask_autoencoder: nn.Module, trainer) -> Path:
    """Load the fine-tuned mask autoencoder given on the command line or trained for this fold."""
    path = fine_tuned_source(trainer)
    if not path.exists():
        raise SDMCError(_how_to_fine_tune(trainer))
    load_state_checked(mask_autoencoder, _mask_autoencoder_state(path, trainer.plans), path)
    return path


def _mask_autoencoder_state(path: Path, plans: PlansManager) -> dict[str, torch.Tensor]:
    if path.is_dir():  # a diffusers folder, e.g. from sdmc_convert_weights --kind vae
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(path, local_files_only=True).state_dict()
    if path.suffix == ".ckpt":  # a CompVis checkpoint such as the released model_finetuned_mask.ckpt
        from sdmcunet.weights.compvis_checkpoint import read_compvis_state_dict
        from sdmcunet.weights.convert import convert_vae

        return convert_vae(read_compvis_state_dict(path)).state_dict()
    state = load_checkpoint(path, MASK_AUTOENCODER_TRAINER)
    if state["dataset_name"] != plans.dataset_name or state["labels"] != plans.labels:
        raise SDMCError(f"{path}: a mask autoencoder of {state['dataset_name']} with labels {state['labels']}, "
                        f"not of {plans.dataset_name} with labels {plans.labels}")
    return sub_state(state["network"], AUTOENCODER)
