"""Where SDMC's mask autoencoder (and other pretrained parts) come from, checked before use."""

from pathlib import Path

import torch
from torch import nn

from sdmcunet.training.checkpoints import load_checkpoint
from sdmcunet.training.model_folder import fold_folder, model_folder
from sdmcunet.utils.errors import SDMCError

MASK_AUTOENCODER_TRAINER = "MaskAutoencoderTrainer"


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load `state` into `module` exactly; the error names the keys that do not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(key for key in set(own) & set(state) if own[key].shape != state[key].shape)
    if missing or unexpected or mismatched:
        raise SDMCError(
            f"{source}: weights of another architecture: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in mismatched[:4]]}"
        )
    module.load_state_dict(state)


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


def load_fine_tuned(mask_autoencoder: nn.Module, trainer) -> Path:
    """Load the fine-tuned mask autoencoder given on the command line or trained for this fold."""
    path = trainer.options.get("mask_autoencoder")
    if path is None:
        folder = model_folder(trainer.plans["dataset_name"], MASK_AUTOENCODER_TRAINER, trainer.plans["plans_name"],
                              trainer.configuration_name)
        path = fold_folder(folder, trainer.fold) / "checkpoint_final.pth"
        if not path.is_file():
            raise SDMCError(
                f"no fine-tuned mask autoencoder for fold {trainer.fold} ({path} missing): train it first with "
                f"`sdmc_train {trainer.plans['dataset_name'].split('_')[0].removeprefix('Dataset')} "
                f"{trainer.configuration_name} {trainer.fold} -tr {MASK_AUTOENCODER_TRAINER}`, "
                f"or give one with -mask_autoencoder FILE"
            )
    load_state_checked(mask_autoencoder, _mask_autoencoder_state(Path(path), trainer.plans), path)
    return Path(path)


def _mask_autoencoder_state(path: Path, plans: dict) -> dict[str, torch.Tensor]:
    if path.is_dir():  # a diffusers folder, e.g. from sdmc_convert_weights --kind vae
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(path, local_files_only=True).state_dict()
    if path.suffix == ".ckpt":  # a CompVis checkpoint such as the released model_finetuned_mask.ckpt
        from sdmcunet.weights.compvis_checkpoint import read_compvis_state_dict
        from sdmcunet.weights.convert import convert_vae

        return convert_vae(read_compvis_state_dict(path)).state_dict()
    state = load_checkpoint(path, MASK_AUTOENCODER_TRAINER)
    if state["dataset_name"] != plans["dataset_name"] or state["labels"] != plans["labels"]:
        raise SDMCError(f"{path}: a mask autoencoder of {state['dataset_name']} with labels {state['labels']}, "
                        f"not of {plans['dataset_name']} with labels {plans['labels']}")
    return {key.removeprefix("autoencoder."): value for key, value in state["network"].items()}
