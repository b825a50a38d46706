"""The published configuration in the benchmarks: stand-in pretrained weights, plan edits, memory estimates.

Shared by `bench_published_cpu.py` and `gpu_check.py`. The published weights (SD `kl-f8`, LDM
LSUN-Churches) cannot be downloaded here or on the GPU machine; stand-ins with their key names
and shapes (`sdmcunet.weights.standin`) go through the same conversion instead, so every figure
these scripts measure (time, memory, file sizes) is the published model's, and none of its quality.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

from sdmcunet.experiment_planning import presets
from sdmcunet.experiment_planning.plans import load_plans, save_plans
from sdmcunet.experiment_planning.plans_manager import ConfigurationManager, PlansManager
from sdmcunet.weights.standin import (
    ldm_autoencoder_shapes, ldm_unet_shapes, standin_state_dict, write_compvis_checkpoint,
)

CONFIGURATION = "2d"
# The names the "sd" plan's networks load their pretrained weights by (folders under $SDMC_weights).
VAE_NAME = presets.SDMC_SIZES["sd"]["autoencoder"]["pretrained"]
UNET_NAME = presets.SDMC_SIZES["sd"]["denoiser"]["pretrained"]


@dataclass(frozen=True)
class StandIn:
    name: str  # folder under $SDMC_weights the plans name
    kind: str  # sdmc_convert_weights --kind
    checkpoint: Path  # the CompVis .ckpt


def write_standin_checkpoints(folder: Path, size_preset: str = "sd") -> list[StandIn]:
    """CompVis checkpoints shaped like the pretrained SD VAE and LDM UNet of an SDMC size preset
    (`sd`: the published ones, 84M and 295M parameters)."""
    sizes = presets.SDMC_SIZES[size_preset]
    autoencoder = sizes["autoencoder"]
    vae = ldm_autoencoder_shapes(autoencoder["ch"], autoencoder["ch_mult"], autoencoder["num_res_blocks"])
    unet = ldm_unet_shapes(sizes["denoiser"])  # 4 input channels, as LSUN-Churches; the conversion widens them to 8
    return [StandIn(VAE_NAME, "vae", write_compvis_checkpoint(folder / "kl-f8.ckpt", standin_state_dict(vae))),
            StandIn(UNET_NAME, "unet", write_compvis_checkpoint(folder / "lsun_churches.ckpt",
                                                                 standin_state_dict(unet, seed=1)))]


def edit_plans(path: Path, batch_size: int | None = None, **schedule) -> dict:
    """Set the batch size (when given) and schedule fields of every family of the 2d configuration;
    the plans are validated when saved, as on every load."""
    plans = load_plans(path)
    for family in plans["configurations"][CONFIGURATION]["families"].values():
        if batch_size is not None:
            family["batch_size"] = batch_size
        family["schedule"].update(schedule)
    save_plans(plans, path)
    return plans


def planned_configuration(plans: dict) -> ConfigurationManager:
    """The plans' configuration the published benchmarks train, read through the typed plans."""
    return PlansManager(plans).configuration(CONFIGURATION)


def estimated_gigabytes(plans: dict, family_name: str, batch_size: int, network: str | None = None) -> float:
    """The planner's estimate of one mixed-precision training step's GPU memory for a family, or for one
    `network` of the baseline family (the planner fits the batch to the largest of its networks)."""
    config = planned_configuration(plans)
    family = copy.deepcopy(config.family(family_name).content)
    if network is not None:
        family["networks"] = {network: family["networks"][network]}
    models = presets.memory_models(family_name, family, config.num_input_channels, config.image_size)
    return max(model.gigabytes(batch_size, amp=True) for model in models)


def folder_bytes(path: Path) -> int:
    """Bytes of a file, or of every file below a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
