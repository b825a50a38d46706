"""What the reference code's training YAML (OmegaConf, `model: params: ...`) says of a model, or, without one,
the published configuration (configs/SDMCSeg/stroke-ldm-kl-8_finetuned.yaml of arozcan/sdmc-seg).

It gives what the weights cannot tell: the trainer variant (fine-tuned or pretrained mask
autoencoder, trainable or frozen image encoder), attention heads, dropout, the noise schedule
and parameterization, and the image size; and the sizes it declares, which the importer checks
against the weights. It is read with `yaml.safe_load` only. A binary SDSeg model and settings
sdmcunet's network cannot express are refused here, naming the field.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from sdmcunet.experiment_planning import presets
from sdmcunet.labels import LABELS
from sdmcunet.networks.latent_diffusion import DOWNSAMPLING_FACTOR
from sdmcunet.utils.errors import SDMCError

PUBLISHED_CONFIG = "configs/SDMCSeg/stroke-ldm-kl-8_finetuned.yaml (arozcan/sdmc-seg)"
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample"}  # LDM parameterization -> diffusers prediction_type

# YAML fields, as the reference's configs nest them.
MODEL = "model.params"
UNET_PARAMS = f"{MODEL}.unet_config.params"
FIRST_STAGE = f"{MODEL}.first_stage_config.params"
COND_STAGE = f"{MODEL}.cond_stage_config.params"
DATA_SPLITS = ("train", "validation", "test")
CONDITIONING_KEY = f"{MODEL}.conditioning_key"
# Fields sdmcunet's network cannot follow: field -> (the value it needs, the reference code's default, why).
SUPPORTED_ONLY = {
    CONDITIONING_KEY: ("concat", None, "sdmcunet's denoiser reads the image latent concatenated to the noisy one"),
    f"{MODEL}.beta_schedule": ("linear", "linear", "the plans express LDM's linear schedule only"),
    f"{UNET_PARAMS}.use_scale_shift_norm": (True, False, "the conversion maps LDM's scale-shift ResBlocks"),
    f"{UNET_PARAMS}.resblock_updown": (True, False, "the conversion maps LDM's ResBlock resampling"),
    f"{UNET_PARAMS}.num_head_channels": (-1, -1, "sdmcunet's denoiser runs num_heads heads, not heads of one width"),
    f"{UNET_PARAMS}.use_spatial_transformer": (False, False, "a cross-attention UNet is another architecture"),
    f"{UNET_PARAMS}.num_classes": (None, None, "a class-conditioned UNet (label_emb) is another architecture"),
}
# The published model's values where a training YAML would say them (PUBLISHED_CONFIG).
PUBLISHED = {"num_heads": 8, "unet_dropout": 0.2, "encoder_dropout": 0.2, "linear_start": 0.0015,
             "linear_end": 0.0155, "timesteps": 1000, "image_size": presets.PUBLISHED_IMAGE_SIZE}


@dataclass
class ReferenceSettings:
    """What the weights cannot tell, from the training YAML or the published configuration."""

    origin: str  # the YAML, or the published configuration
    trainer: str
    num_heads: int
    unet_dropout: float
    encoder_dropout: float
    diffusion: dict  # the plans' `diffusion`
    image_size: int
    pretrained: dict  # network -> the pretrained weights its training started from (or None)
    scale_factor: float | None  # the YAML's fixed scale when scale_by_std is false
    declared: dict = field(default_factory=dict)  # YAML field -> value, for the fields the weights also show
    assumptions: list[str] = field(default_factory=list)


_ABSENT = object()  # a field the YAML does not have


class _Yaml:
    """A training YAML's mapping, read field by field ("model.params.timesteps") with type checks."""

    _KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
        "integer": ("an integer", lambda value: isinstance(value, int) and not isinstance(value, bool)),
        "number": ("a number", lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)),
        "integers": ("a list of integers",
                     lambda value: isinstance(value, list) and all(isinstance(item, int) for item in value)),
        "boolean": ("true or false", lambda value: isinstance(value, bool)),
        "text": ("a string", lambda value: isinstance(value, str)),
        "any": ("anything", lambda value: True),
    }

    def __init__(self, path: Path):
        self.path = path
        try:
            self.content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise SDMCError(f"{path}: not valid YAML ({self._where(error)})") from None
        except UnicodeDecodeError as error:
            raise SDMCError(f"{path}: not valid YAML (not UTF-8 text: {error.reason})") from None
        except OSError as error:
            raise SDMCError(f"{path}: cannot be read ({error.strerror or error})") from None
        if not isinstance(self.content, dict):
            raise SDMCError(f"{path}: expected a mapping (a training config with model: params: ...), "
                            f"found {type(self.content).__name__}")
        if not isinstance(self.get(MODEL, "any", None), dict):
            raise SDMCError(f"{path}: not a reference training config (no mapping {MODEL})")

    @staticmethod
    def _where(error: yaml.YAMLError) -> str:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem

    def has(self, name: str) -> bool:
        return self.get(name, "any", _ABSENT) is not _ABSENT

    def get(self, name: str, kind: str, default: Any = None) -> Any:
        """The value of the field `name`, or `default` where the YAML has no such field."""
        node: Any = self.content
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        if kind == "number" and isinstance(node, str):
            # PyYAML reads 1e-4 as text (YAML 1.1); OmegaConf, which the reference used, as a number
            node = self._number(node)
        description, accepts = self._KINDS[kind]
        if not accepts(node):
            raise SDMCError(f"{self.path}: {name} must be {description}, got {node!r}")
        return node

    @staticmethod
    def _number(text: str) -> float | str:
        try:
            return float(text)
        except ValueError:
            return text


def read_settings(config: Path | None) -> ReferenceSettings:
    """The settings of the YAML `config`, or of the published configuration when there is none."""
    if config is None:
        return _published_settings()
    settings = _Yaml(config)
    _refuse_other_models(settings)
    _refuse_unsupported(settings)
    assumptions: list[str] = []
    trainer = _trainer_of(settings, assumptions)
    num_heads = settings.get(f"{UNET_PARAMS}.num_heads", "integer")
    if num_heads is None or num_heads < 1:
        raise SDMCError(f"{config}: {UNET_PARAMS}.num_heads is {num_heads}; sdmcunet's denoiser runs num_heads "
                        f"heads in every attention block and needs it set")
    return ReferenceSettings(
        origin=str(config), trainer=trainer, num_heads=num_heads,
        unet_dropout=_with_default(settings, f"{UNET_PARAMS}.dropout", 0.0, assumptions),
        encoder_dropout=_with_default(settings, f"{COND_STAGE}.dropout", 0.0, assumptions),
        diffusion=_diffusion(settings, assumptions), image_size=_image_size(settings, assumptions),
        pretrained=_pretrained(settings), scale_factor=_fixed_scale_factor(settings),
        declared=_declared_sizes(settings), assumptions=assumptions,
    )


def _published_settings() -> ReferenceSettings:
    diffusion = {"num_train_timesteps": PUBLISHED["timesteps"], "beta_schedule": "scaled_linear",
                 "beta_start": PUBLISHED["linear_start"], "beta_end": PUBLISHED["linear_end"],
                 "prediction_type": "epsilon"}
    sizes = presets.SDMC_SIZES["sd"]
    assumption = (f"no --config: the published configuration {PUBLISHED_CONFIG} is assumed: fine-tuned mask "
                  f"autoencoder and trainable image encoder (SDMCFinetunedTrainer), num_heads "
                  f"{PUBLISHED['num_heads']}, dropout {PUBLISHED['unet_dropout']} (UNet) and "
                  f"{PUBLISHED['encoder_dropout']} (image encoder), LDM's linear schedule {PUBLISHED['linear_start']}.."
                  f"{PUBLISHED['linear_end']} over {PUBLISHED['timesteps']} steps, epsilon prediction, "
                  f"{PUBLISHED['image_size']} x {PUBLISHED['image_size']} images")
    return ReferenceSettings(
        origin=f"the published configuration {PUBLISHED_CONFIG}", trainer="SDMCFinetunedTrainer",
        num_heads=PUBLISHED["num_heads"], unet_dropout=PUBLISHED["unet_dropout"],
        encoder_dropout=PUBLISHED["encoder_dropout"], diffusion=diffusion, image_size=PUBLISHED["image_size"],
        pretrained={"autoencoder": sizes["autoencoder"]["pretrained"], "denoiser": sizes["denoiser"]["pretrained"]},
        scale_factor=None, assumptions=[assumption],
    )


def _refuse_other_models(settings: _Yaml) -> None:
    """Binary SDSeg and anything but SDSeg / SDMC-Seg: sdmcunet's model decodes a 3-class colour mask."""
    target = settings.get("model.target", "text", "")
    num_classes = settings.get(f"{MODEL}.num_classes", "integer")
    if target.endswith(".SDSeg") and num_classes in (None, 2):
        raise SDMCError(
            f"{settings.path}: a binary SDSeg model (model.target {target}, num_classes {num_classes or 'absent: 2'}): "
            f"its mask autoencoder decodes one foreground class, sdmcunet's SDMC-Seg a 3-class colour mask "
            f"(non-stroke, ischemic, hemorrhagic), so it cannot be imported")
    if target and not target.endswith((".SDSeg", ".SDMCSeg")):
        raise SDMCError(f"{settings.path}: model.target {target} is neither SDMC-Seg nor SDSeg; only their "
                        f"checkpoints can be imported")
    if num_classes not in (None, len(LABELS)):
        raise SDMCError(f"{settings.path}: {MODEL}.num_classes is {num_classes}; sdmcunet's SDMC-Seg decodes "
                        f"{len(LABELS)} classes (non-stroke, ischemic, hemorrhagic)")


def _refuse_unsupported(settings: _Yaml) -> None:
    values = {name: settings.get(name, "any", default) for name, (_, default, _) in SUPPORTED_ONLY.items()}
    # LatentDiffusion without a conditioning_key: concat_mode (default true) decides
    values[CONDITIONING_KEY] = values[CONDITIONING_KEY] or (
        "concat" if settings.get(f"{MODEL}.concat_mode", "boolean", True) else "crossattn")
    for name, (supported, _, reason) in SUPPORTED_ONLY.items():
        if values[name] != supported:
            raise SDMCError(f"{settings.path}: {name} is {values[name]!r}: {reason}; it cannot be imported")


def _trainer_of(settings: _Yaml, assumptions: list[str]) -> str:
    """Which sdmcunet trainer trains what the YAML describes: mask autoencoder fine-tuned or not, image
    encoder trainable or not."""
    mask_weights = settings.get(f"{FIRST_STAGE}.ckpt_path", "text")
    if mask_weights is None:
        assumptions.append(f"{FIRST_STAGE}.ckpt_path absent: the mask autoencoder is taken as the fine-tuned one")
    # The SD release file is model.ckpt; the fine-tuned mask encoder is model_finetuned_mask.ckpt
    fine_tuned = mask_weights is None or Path(mask_weights).name != "model.ckpt"
    trainable = settings.get(f"{MODEL}.cond_stage_trainable", "boolean")
    if trainable is None:
        assumptions.append(f"{MODEL}.cond_stage_trainable absent: LDM's default, false (a frozen image encoder)")
    if fine_tuned:
        return "SDMCFinetunedTrainer" if trainable else "SDMCFinetunedFrozenTrainer"
    if trainable:
        return "SDMCPretrainedTrainer"
    raise SDMCError(f"{settings.path}: a pretrained mask autoencoder ({mask_weights}) with a frozen image encoder "
                    f"(cond_stage_trainable false): no sdmcunet trainer trains that variant")


def _with_default(settings: _Yaml, name: str, default: float, assumptions: list[str]) -> float:
    value = settings.get(name, "number")
    if value is None:
        assumptions.append(f"{name} absent: LDM's default {default}")
        return default
    return value


def _diffusion(settings: _Yaml, assumptions: list[str]) -> dict:
    """The plans' `diffusion` from the YAML (absent fields: LDM's DDPM defaults, as the training had them)."""
    parameterization = settings.get(f"{MODEL}.parameterization", "text", "eps")
    if parameterization not in PREDICTION_TYPES:
        raise SDMCError(f"{settings.path}: {MODEL}.parameterization is {parameterization!r}; LDM supports "
                        f"{' and '.join(PREDICTION_TYPES)}")
    return {"num_train_timesteps": settings.get(f"{MODEL}.timesteps", "integer", 1000),
            "beta_schedule": "scaled_linear",  # diffusers' name of LDM's "linear"
            "beta_start": _with_default(settings, f"{MODEL}.linear_start", 1e-4, assumptions),
            "beta_end": _with_default(settings, f"{MODEL}.linear_end", 2e-2, assumptions),
            "prediction_type": PREDICTION_TYPES[parameterization]}


def _image_size(settings: _Yaml, assumptions: list[str]) -> int:
    """The side the model saw: the data's `size` or 8 x the latent `image_size`, whichever the YAML gives (they
    must agree)."""
    candidates = {f"data.params.{split}.params.size": settings.get(f"data.params.{split}.params.size", "integer")
                  for split in DATA_SPLITS}
    candidates |= {name: latent * DOWNSAMPLING_FACTOR for name in (f"{MODEL}.image_size", f"{UNET_PARAMS}.image_size")
                   if (latent := settings.get(name, "integer")) is not None}
    found = {name: size for name, size in candidates.items() if size is not None}
    if len(set(found.values())) > 1:
        raise SDMCError(f"{settings.path}: the image sizes disagree: " + ", ".join(
            f"{name} gives {size}" for name, size in found.items()) + " (latent sizes are 1/8 of the image)")
    if not found:
        assumptions.append(f"no image size in the YAML: the published {PUBLISHED['image_size']}")
        return PUBLISHED["image_size"]
    return next(iter(found.values()))


def _pretrained(settings: _Yaml) -> dict:
    """The weights the reference training started from, as the plans name them."""
    encoder_start = settings.has(f"{FIRST_STAGE}.ckpt_path") or settings.has(f"{COND_STAGE}.ckpt_path")
    unet_start = settings.get(f"{MODEL}.ckpt_path", "text", "")
    sizes = presets.SDMC_SIZES["sd"]
    return {"autoencoder": sizes["autoencoder"]["pretrained"] if encoder_start else None,
            "denoiser": sizes["denoiser"]["pretrained"] if "lsun_churches" in unet_start else None}


def _fixed_scale_factor(settings: _Yaml) -> float | None:
    """Without scale_by_std the reference keeps its `scale_factor` argument (not saved in the checkpoint)."""
    if settings.get(f"{MODEL}.scale_by_std", "boolean", False):
        return None
    return settings.get(f"{MODEL}.scale_factor", "number", 1.0)


def _declared_sizes(settings: _Yaml) -> dict:
    """The YAML's values of the fields the weights show too (checked against them)."""
    names = [f"{FIRST_STAGE}.ddconfig.{key}" for key in ("ch", "ch_mult", "num_res_blocks")]
    names += [f"{COND_STAGE}.{key}" for key in ("ch", "ch_mult", "num_res_blocks")]
    names += [f"{UNET_PARAMS}.{key}" for key in ("model_channels", "channel_mult", "num_res_blocks",
                                                  "attention_resolutions", "in_channels", "out_channels")]
    kinds = {"ch_mult": "integers", "channel_mult": "integers", "attention_resolutions": "integers"}
    declared = {name: settings.get(name, kinds.get(name.rpartition(".")[2], "integer")) for name in names}
    return {name: value for name, value in declared.items() if value is not None}
