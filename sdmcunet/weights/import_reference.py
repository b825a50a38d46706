"""`sdmc_import_reference`: a model trained with the reference code as an sdmcunet model folder.

    sdmc_import_reference -i last.ckpt -o MODEL_FOLDER [--config stroke-ldm-kl-8_finetuned.yaml] [--no-ema]
    sdmc_predict -i SLICES -o OUT -m MODEL_FOLDER -f all

The input is a whole PyTorch Lightning checkpoint of SDMC-Seg (arozcan/sdmc-seg) or SDSeg
(lin-tianyu/Stable-Diffusion-Seg), read without running any of its code (`CompVisCheckpoint`).
Its `state_dict` maps onto `SDMCSeg` as follows:

    first_stage_model.*          -> mask_autoencoder      (convert_vae)
    cond_stage_model.encoder.*   -> image_encoder.encoder (convert_vae_encoder: the same mapping)
    cond_stage_model.out.*       -> image_encoder.projection (the 1x1 convolution 8 -> 4, unchanged)
    model.diffusion_model.*      -> denoiser              (convert_unet; 8 input channels already)
    model_ema.*                  -> the EMA denoiser (LitEma: "diffusion_model" + the parameter name without
                                    its dots; mapped back through the training weights' names)
    scale_factor, alphas_cumprod -> the buffers of the same names (the schedule is checked against the plans)

The reference evaluates with the EMA weights, so they are imported by default (`--no-ema`: the
training weights, in both slots, since sdmcunet predicts with its EMA copy). The folder holds
`plans.json` (plans `sdmcReferencePlans`: the GPU preset with the "sd" sizes, then the sizes the
weights show and what the YAML says), `dataset.json` (the Stroke2021 layout of
sdmc_convert_stroke2021, or `-d ID`'s), `fold_all/checkpoint_final.pth` and its frozen mask
autoencoder, both written by the trainer itself (exactly what a training writes), and
`import_info.json`: where the model came from and every assumption made. Without `--config` the
published configuration (configs/SDMCSeg/stroke-ldm-kl-8_finetuned.yaml) is assumed; with it,
fields the YAML leaves out take the reference code's defaults, as they did in its training, and
every size the YAML gives must be the one the weights show. The trainer follows the YAML: the
fine-tuned mask autoencoder (`first_stage_config` ckpt_path other than the SD release's
`model.ckpt`) with a trainable image encoder is SDMCFinetunedTrainer, with a frozen one
SDMCFinetunedFrozenTrainer; the pretrained one with a trainable encoder SDMCPretrainedTrainer.
Placed at `$SDMC_results/Dataset{ID}_{Name}/{Trainer}__sdmcReferencePlans__2d`, the model is
also one of that dataset's results (`sdmc_report -d ID -p sdmcReferencePlans`).

Decisions:
- The input is the published one: the PNG channel, min-max scaled per image, the whole slice
  resized (no crop to the head). sdmcunet zero-pads a slice that is not square to a square first,
  where the reference stretched it: the Stroke2021 slices are square, so nothing changes there.
- A binary SDSeg model (target `...SDSeg.SDSeg` with `num_classes` 2 or absent) is refused: its
  mask autoencoder decodes one foreground channel, sdmcunet's SDMC model a 3-class colour mask.
  A class-conditioned UNet (`label_emb`: SDSeg's multi-class variant) is another architecture.
- The model is fold `all`: the reference's own split is unknown, so it has no cross-validation.
- Nothing is written unless everything fits: the folder is built in `.NAME.partial` beside
  `-o` and renamed into place when complete. A folder that holds anything else is never touched;
  the same import again has nothing to do.
"""

import argparse
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from sdmcunet import paths
from sdmcunet.dataset_conversion.convert_slice import CT_CHANNELS, FILE_ENDING
from sdmcunet.experiment_planning import presets
from sdmcunet.experiment_planning.planners import CONFIGURATION
from sdmcunet.experiment_planning.plans import MASK_AUTOENCODER_FAMILY, SDMC_FAMILY, validate_plans
from sdmcunet.labels import LABELS
from sdmcunet.networks.latent_diffusion import DOWNSAMPLING_FACTOR, LATENT_CHANNELS
from sdmcunet.networks.sdmc import noise_schedule
from sdmcunet.raw_dataset import DATASET_FILE, find_dataset, load_dataset_json, make_dataset_json
from sdmcunet.results.layout import PLANS_FILE, fold_folder
from sdmcunet.training.trainers import TRAINERS
from sdmcunet.training.trainers.sdmc import SDMCTrainer
from sdmcunet.utils.cli import configure_logging, console_entry, non_negative_int
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_json, make_folder, read_json, sha256
from sdmcunet.weights.convert import convert_unet, convert_vae, convert_vae_encoder, ensure_free_output
from sdmcunet.weights.reference_checkpoint import (
    MASK_AUTOENCODER, PROJECTION, ReferenceWeights, encoder_sizes, read_reference_checkpoint, stored_float, unet_sizes,
)
from sdmcunet.weights.reference_config import (
    COND_STAGE, FIRST_STAGE, UNET_PARAMS, ReferenceSettings, read_settings,
)

PLANS_NAME = "sdmcReferencePlans"
FOLD = "all"
IMPORT_RECORD = "import_info.json"
DEFAULT_DATASET = "Dataset2021_Stroke2021"  # what `sdmc_convert_stroke2021 -d 2021` writes
SCHEDULE_TOLERANCE = 1e-4  # relative: float32 rounding of the same schedule stays below 2e-6

# Recorded with every import: where sdmcunet differs from the reference training, or cannot know it.
IMPORT_ASSUMPTIONS = (
    "input: the PNG channel min-max scaled per image and the whole slice resized to the plans' image size, as the "
    "reference's data module did; a slice that is not square is zero-padded to a square first, where the reference "
    "stretched it",
    f"fold {FOLD}: the reference's own training split is not known, so there is no cross-validation",
    "training schedule (epochs, learning rate, batch size): sdmcunet's published GPU preset, not read from the YAML; "
    "inference does not use it",
    "no dataset_fingerprint.json: the model never saw an sdmcunet dataset, and inference reads none",
)

logger = logging.getLogger(__name__)


# ================================================================ checks across the parts

def _check_declared(settings: ReferenceSettings, found: Mapping[str, Any], checkpoint: Path) -> None:
    """Every field the YAML declares and the weights show must agree."""
    levels = len(found[f"{UNET_PARAMS}.channel_mult"])
    for name, declared in settings.declared.items():
        if name.endswith("attention_resolutions"):  # LDM ignores rates deeper than the UNet goes
            declared = sorted({rate for rate in declared if rate < 2**levels})
        if declared != found[name]:
            raise SDMCError(f"{settings.origin}: {name} is {declared} there but {found[name]} in {checkpoint}; "
                            f"give the YAML the model was trained with")


def _check_schedule(settings: ReferenceSettings, alphas_cumprod: torch.Tensor | None, checkpoint: Path) -> None:
    """The checkpoint's alphas_cumprod must be the plans' schedule (LDM's "linear" = diffusers' "scaled_linear")."""
    if alphas_cumprod is None:
        raise SDMCError(f"{checkpoint}: holds no alphas_cumprod: not a latent diffusion (LDM) checkpoint")
    diffusion = settings.diffusion
    if alphas_cumprod.numel() != diffusion["num_train_timesteps"]:
        raise SDMCError(f"{settings.origin}: timesteps is {diffusion['num_train_timesteps']} there but "
                        f"{alphas_cumprod.numel()} in {checkpoint} (its alphas_cumprod)")
    expected = noise_schedule(diffusion).alphas_cumprod.double()
    if not torch.allclose(alphas_cumprod.double(), expected, rtol=SCHEDULE_TOLERANCE, atol=0):
        found = alphas_cumprod.double()
        start, end = 1 - found[0], 1 - found[-1] / found[-2]  # beta_0 and beta_T-1
        raise SDMCError(f"{settings.origin}: linear_start, linear_end are {diffusion['beta_start']}, "
                        f"{diffusion['beta_end']} there, but the noise schedule in {checkpoint} (alphas_cumprod) runs "
                        f"from {float(start):.4g} to {float(end):.4g}; give the YAML the model was trained with")


def _scale_factor(weights: ReferenceWeights, settings: ReferenceSettings, checkpoint: Path) -> float:
    stored = weights.buffers.get("scale_factor")
    value = float(stored) if stored is not None else settings.scale_factor
    if value is None:
        raise SDMCError(f"{checkpoint}: holds no scale_factor (trained with scale_by_std true, its scale should be "
                        f"saved): the latent scale of its masks is unknown")
    if not (math.isfinite(value) and value > 0):
        raise SDMCError(f"{checkpoint}: scale_factor is {value}; a latent scale must be a positive number")
    return value


# ================================================================ the model folder

@dataclass(frozen=True)
class TargetDataset:
    name: str  # Dataset{ID}_{Name}: where sdmc_report looks for the model
    dataset_json: dict
    png_channel: int


def target_dataset(dataset_id: int | None) -> TargetDataset:
    """The raw dataset `dataset_id` (its dataset.json), or the Stroke2021 layout of sdmc_convert_stroke2021."""
    if dataset_id is None:
        content = make_dataset_json(CT_CHANNELS, LABELS, 0, FILE_ENDING, name="Stroke2021",
                                    description="the channel and label layout of sdmc_convert_stroke2021; the model "
                                    f"was trained elsewhere (see {IMPORT_RECORD})")
        return TargetDataset(DEFAULT_DATASET, content, _png_channel(CT_CHANNELS, "the Stroke2021 layout"))
    folder = find_dataset(paths.raw_root(), dataset_id)
    dataset = load_dataset_json(folder)
    if dataset.labels != LABELS:
        raise SDMCError(f"{folder / 'dataset.json'}: labels {dataset.labels}; the reference model decodes {LABELS}")
    return TargetDataset(folder.name, read_json(folder / DATASET_FILE),
                         _png_channel(dataset.channel_names, str(folder / DATASET_FILE)))


def _png_channel(channel_names: Mapping[int, str], where: str) -> int:
    channels = [channel for channel, name in channel_names.items() if name.upper() == "PNG"]
    if not channels:
        raise SDMCError(f"{where}: no 'PNG' channel; the reference model reads the organisers' PNG "
                        f"(channels: {dict(channel_names)})")
    return channels[0]


def reference_plans(settings: ReferenceSettings, dataset: TargetDataset, autoencoder: dict, denoiser: dict,
                    ema_decay: float | None) -> dict:
    """Plans for the imported model: the GPU preset with the "sd" sizes, then what the weights and the YAML say."""
    families = presets.with_sdmc_size(presets.gpu_families(), "sd")
    networks = {
        "autoencoder": autoencoder | {"pretrained": settings.pretrained["autoencoder"]},
        "image_encoder": {"dropout": settings.encoder_dropout},
        "denoiser": denoiser | {"num_heads": settings.num_heads, "dropout": settings.unet_dropout,
                                "pretrained": settings.pretrained["denoiser"]},
    }
    published = all(_sizes_only(networks[part]) == _sizes_only(presets.SDMC_SIZES["sd"][part]) for part in networks)
    families[SDMC_FAMILY].update(networks=networks, diffusion=settings.diffusion, size_preset="sd" if published else None)
    families[MASK_AUTOENCODER_FAMILY].update(networks={"autoencoder": networks["autoencoder"]},
                                        size_preset="sd" if published else None)
    if ema_decay is not None:
        families[SDMC_FAMILY]["schedule"]["ema_decay"] = ema_decay
    size = settings.image_size
    plans = {
        "plans_name": PLANS_NAME, "planner": "sdmc_import_reference", "dataset_name": dataset.name,
        "compute_target": {"device": "cuda", "gpu_memory_target_gb": None},
        "num_input_channels_raw": len(dataset.dataset_json["channel_names"]), "labels": dict(LABELS),
        "configurations": {CONFIGURATION: {
            "data_identifier": f"{PLANS_NAME}_{CONFIGURATION}",
            # the published input: the PNG min-max scaled, the whole slice resized (no crop to the head)
            "input_channels": [{"name": "PNG", "source_channel": dataset.png_channel,
                                "normalization": "min_max_per_image"}],
            "crop_to_head": False,
            "image_size": [size, size], "latent_size": [size // DOWNSAMPLING_FACTOR] * 2,
            "image_interpolation": "bilinear", "families": families,
        }},
    }
    try:
        validate_plans(plans, Path(PLANS_NAME))
    except SDMCError as error:
        raise SDMCError(f"the imported model's plans, from {settings.origin}, would be invalid: {error}") from None
    return plans


def _sizes_only(sizes: dict) -> dict:
    return {key: value for key, value in sizes.items() if key not in ("pretrained", "dropout")}


@dataclass
class ImportedModel:
    plans: dict
    trainer: str
    network: dict[str, torch.Tensor]  # the SDMCSeg state dict
    ema_denoiser: dict[str, torch.Tensor]
    ema_updates: int  # n_averaged of the EMA copy (0: it holds the training weights)


def convert_reference(weights: ReferenceWeights, settings: ReferenceSettings, dataset: TargetDataset,
                      checkpoint: Path) -> ImportedModel:
    """The checkpoint's parts as our networks, checked against each other, the YAML and the plans; the EMA
    denoiser is the training one where `weights` hold no EMA."""
    mask_autoencoder = convert_vae(weights.mask_autoencoder, source=f"{checkpoint} ({MASK_AUTOENCODER.rstrip('.')})")
    image_encoder = convert_vae_encoder(weights.image_encoder, source=f"{checkpoint} (cond_stage_model)")
    autoencoder, encoder = encoder_sizes(mask_autoencoder.encoder), encoder_sizes(image_encoder)
    denoiser = unet_sizes(weights.denoiser, checkpoint)
    found = {f"{FIRST_STAGE}.ddconfig.{key}": value for key, value in autoencoder.items()}
    found |= {f"{COND_STAGE}.{key}": value for key, value in encoder.items()}
    found |= {f"{UNET_PARAMS}.{key}": value for key, value in denoiser.items()}
    _check_declared(settings, found, checkpoint)
    _check_network_shape(autoencoder, encoder, denoiser, weights.projection, checkpoint)
    _check_schedule(settings, weights.buffers.get("alphas_cumprod"), checkpoint)
    unet = {key: denoiser[key] for key in ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions")}
    plans = reference_plans(settings, dataset, autoencoder, unet, weights.ema_decay)
    sizes = plans["configurations"][CONFIGURATION]["families"][SDMC_FAMILY]["networks"]["denoiser"]
    latent_size = settings.image_size // DOWNSAMPLING_FACTOR
    training_denoiser = convert_unet(weights.denoiser, latent_size, sizes, source=f"{checkpoint} (model)")
    ema_denoiser = (convert_unet(weights.ema_denoiser, latent_size, sizes, source=f"{checkpoint} (model_ema)")
                    if weights.ema_denoiser is not None else training_denoiser)
    network = {f"mask_autoencoder.{name}": value for name, value in mask_autoencoder.state_dict().items()}
    network |= {f"image_encoder.encoder.{name}": value for name, value in image_encoder.state_dict().items()}
    network |= {f"image_encoder.projection.{name}": value for name, value in weights.projection.items()}
    network |= {f"denoiser.{name}": value for name, value in training_denoiser.state_dict().items()}
    network |= {"alphas_cumprod": weights.buffers["alphas_cumprod"],
                "scale_factor": torch.tensor(_scale_factor(weights, settings, checkpoint))}
    updates = max(1, weights.ema_updates or 0) if weights.ema_denoiser is not None else 0
    return ImportedModel(plans, settings.trainer, network, ema_denoiser.state_dict(), updates)


def _check_network_shape(autoencoder: dict, encoder: dict, denoiser: dict, projection: Mapping[str, torch.Tensor],
                         checkpoint: Path) -> None:
    """What sdmcunet's SDMCSeg cannot express: an image encoder of other sizes or another projection, a UNet of
    other channels."""
    shapes = {name: tuple(value.shape) for name, value in projection.items()}
    expected = {"weight": (LATENT_CHANNELS, 2 * LATENT_CHANNELS, 1, 1), "bias": (LATENT_CHANNELS,)}
    if shapes != expected:
        raise SDMCError(f"{checkpoint}: its image encoder's projection ({PROJECTION}*) has shapes {shapes}; "
                        f"SDMC-Seg's is a 1x1 convolution 8 -> 4 {expected}")
    if encoder != autoencoder:
        raise SDMCError(f"{checkpoint}: its image encoder (cond_stage_model) has sizes {encoder}, its mask autoencoder "
                        f"{autoencoder}; sdmcunet builds both with one size")
    if denoiser["in_channels"] != 2 * LATENT_CHANNELS:
        raise SDMCError(f"{checkpoint}: its UNet reads {denoiser['in_channels']} input channels; SDMC-Seg's reads "
                        f"{2 * LATENT_CHANNELS} (the noisy mask latent and the image latent)")


def _trainer_with(model: ImportedModel, folder: Path, weights: ReferenceWeights) -> SDMCTrainer:
    """The model's trainer, built from its plans as inference builds it, holding the imported weights and the
    source's progress; it writes into `folder`. The weights were checked part by part: a strict load that
    still fails is a bug (and keeps its traceback)."""
    trainer = TRAINERS.get(model.trainer)(model.plans, CONFIGURATION, FOLD, folder, "cpu")
    trainer.initialize(initial_weights=False)
    trainer.module.load_state_dict(model.network, strict=True)
    trainer.ema.module.load_state_dict(model.ema_denoiser, strict=True)
    trainer.ema.n_averaged.fill_(model.ema_updates)
    trainer.epoch, trainer.iteration = weights.epoch or 0, weights.global_step or 0
    trainer.output_folder = fold_folder(folder, FOLD)
    return trainer


def _write_into_place(model: ImportedModel, weights: ReferenceWeights, dataset: TargetDataset, record: dict,
                      destination: Path) -> None:
    """plans.json, dataset.json, fold_all/ and the import record into a staging folder renamed to `destination`."""
    staging = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted import: incomplete
    try:
        make_folder(staging)
        atomic_write_json(staging / PLANS_FILE, model.plans)
        atomic_write_json(staging / DATASET_FILE, dataset.dataset_json)
        _trainer_with(model, staging, weights).save("final")
        atomic_write_json(staging / IMPORT_RECORD, record)
        if destination.exists():  # an empty folder, checked before
            destination.rmdir()
        staging.rename(destination)
    except OSError as error:
        raise SDMCError(f"{destination}: cannot write the model folder ({error.strerror or error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _identity(checkpoint: Path, config: Path | None, use_ema: bool, dataset: TargetDataset) -> dict:
    """What makes two imports the same: the files' contents and the options."""
    return {"source_sha256": sha256(checkpoint), "config_sha256": sha256(config) if config else None,
            "ema": use_ema, "dataset": dataset.name}


def _previous_identity(folder: Path) -> dict | None:
    record = folder / IMPORT_RECORD
    return read_json(record).get("identity") if record.is_file() else None


def _record(identity: dict, checkpoint: Path, config: Path | None, model: ImportedModel, weights: ReferenceWeights,
            settings: ReferenceSettings, dataset: TargetDataset, use_ema: bool) -> dict:
    assumptions = [*settings.assumptions, *IMPORT_ASSUMPTIONS]
    if "scale_factor" not in weights.buffers:
        assumptions.append(f"scale_factor {settings.scale_factor}: the YAML's fixed scale (scale_by_std false)")
    return {
        "identity": identity,
        "source": {"file": checkpoint.name, "path": str(checkpoint.resolve()), "sha256": identity["source_sha256"],
                   "global_step": weights.global_step, "epoch": weights.epoch},
        "config": {"file": config.name, "path": str(config.resolve()), "sha256": identity["config_sha256"]}
        if config else None,
        "weights": "EMA (model_ema.*)" if use_ema else "training (model.diffusion_model.*, --no-ema)",
        "ema": {"decay": weights.ema_decay, "num_updates": weights.ema_updates} if use_ema else None,
        "trainer": model.trainer, "plans_name": PLANS_NAME, "dataset_name": dataset.name,
        "scale_factor": stored_float(model.network["scale_factor"]), "assumptions": assumptions,
    }


def import_reference(checkpoint: Path, destination: Path, config: Path | None = None, use_ema: bool = True,
                     dataset_id: int | None = None) -> bool:
    """Write the model folder `destination` from a reference checkpoint; False if it already holds this import."""
    for path in (checkpoint, config):
        if path is not None and not path.is_file():
            raise SDMCError(f"{path}: file not found")
    dataset = target_dataset(dataset_id)
    identity = _identity(checkpoint, config, use_ema, dataset)
    if _previous_identity(destination) == identity:
        logger.info("%s: already imported from %s, skipping", destination, checkpoint)
        return False
    ensure_free_output(destination)
    settings = read_settings(config)
    weights = read_reference_checkpoint(checkpoint, use_ema)
    model = convert_reference(weights, settings, dataset, checkpoint)
    record = _record(identity, checkpoint, config, model, weights, settings, dataset, use_ema)
    _write_into_place(model, weights, dataset, record, destination)
    logger.info("%s: %s imported from %s", destination, model.trainer, checkpoint)
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdmc_import_reference",
        description="Import an SDMC-Seg / SDSeg checkpoint trained with the reference code (PyTorch Lightning "
        ".ckpt) into an sdmcunet model folder for sdmc_predict -m FOLDER -f all, reading it without running any "
        "code it holds.",
    )
    parser.add_argument("-i", "--input", type=Path, required=True, metavar="CKPT", help="the reference checkpoint")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL_FOLDER",
                        help="new (or empty) folder for the model; for sdmc_report -d ID -p "
                        f"{PLANS_NAME}: $SDMC_results/Dataset{{ID}}_{{Name}}/{{Trainer}}__{PLANS_NAME}__"
                        f"{CONFIGURATION}")
    parser.add_argument("--config", type=Path, metavar="YAML",
                        help="the training config (model: params: ...); default: the published configuration")
    parser.add_argument("--no-ema", dest="use_ema", action="store_false",
                        help="import the training weights instead of their EMA (the reference evaluates with the EMA)")
    parser.add_argument("-d", dest="dataset_id", type=non_negative_int, metavar="DATASET_ID",
                        help="take channel names and labels from this raw dataset (default: the Stroke2021 layout of "
                        "sdmc_convert_stroke2021, channels CT and PNG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    return parser


@console_entry
def main(argv: list[str] | None = None) -> int:
    """Command line: import `-i CKPT` into the model folder `-o MODEL_FOLDER`."""
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    if import_reference(args.input, args.output, args.config, args.use_ema, args.dataset_id):
        record = read_json(args.output / IMPORT_RECORD)
        print(f"{args.output}: {record['trainer']} imported from {args.input}, its {record['weights']} weights "
              f"(global step {record['source']['global_step']}); predict with `sdmc_predict -i SLICES -o OUT "
              f"-m {args.output} -f {FOLD}`")
    else:
        print(f"{args.output}: already holds the model imported from {args.input} with these options; nothing to do")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
