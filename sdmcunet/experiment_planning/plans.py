"""Plans: the single source of configuration for preprocessing, networks and training.

A plans file is JSON (`preprocessed/Dataset.../<plans_name>.json`), written by a planner and
editable by hand; `docs/plans.md` documents every field. A configuration may name another in
`inherits_from` and override only what differs (as in nnU-Net v2).
"""

import copy
import math
import re
from pathlib import Path

from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_json, read_json

NORMALIZATIONS = ("min_max_per_image", "window", "z_score")
INTERPOLATIONS = ("bilinear", "bicubic")
BASELINE_FAMILY, SDMC_FAMILY, MASK_AUTOENCODER_FAMILY = "baseline", "sdmc", "mask_autoencoder"
FAMILIES = (BASELINE_FAMILY, SDMC_FAMILY, MASK_AUTOENCODER_FAMILY)
LR_DECAYS = ("constant", "poly")
BASELINE_LOSSES = ("dice_ce", "dice", "ce")  # Dice + cross-entropy (published), Dice alone, cross-entropy alone
OPTIMIZERS = ("adam", "adamw")
AMP_DTYPES = ("float16", "bfloat16")  # autocast precision on CUDA
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # what the SDMC denoiser outputs
SELECTION_METRICS = ("IoU", "Dice")
PNG_WINDOW_SOURCES = ("measured", "default")  # measured by the converter on DICOM/PNG pairs, or the brain window
NETWORK_DIVISOR = 32  # five 2x downsamplings (U-Nets, Swin-UNETR) and the VAE's factor 8
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
TOP_LEVEL_KEYS = ("plans_name", "planner", "dataset_name", "num_input_channels_raw", "labels", "configurations")


def plans_path(preprocessed_folder: Path, plans_name: str) -> Path:
    return preprocessed_folder / f"{plans_name}.json"


def load_plans(path: Path) -> dict:
    if not path.is_file():
        raise SDMCError(f"{path}: plans not found; run sdmc_plan_and_preprocess (or sdmc_plan_experiment) first")
    plans = read_json(path)
    validate_plans(plans, path)
    return plans


def save_plans(plans: dict, path: Path) -> None:
    validate_plans(plans, path)
    atomic_write_json(path, plans)


def configuration(plans: dict, name: str) -> dict:
    """A configuration with its `inherits_from` chain resolved (the child's values win)."""
    configurations = plans["configurations"]
    if name not in configurations:
        raise SDMCError(f"plans {plans['plans_name']} have no configuration {name!r}; available: {', '.join(configurations)}")
    chain, current = [], name
    while current is not None:
        if current in chain:
            raise SDMCError(f"plans {plans['plans_name']}: configuration inheritance loops through {current!r}")
        chain.append(current)
        current = configurations[current].get("inherits_from")
        if current is not None and current not in configurations:
            raise SDMCError(f"plans {plans['plans_name']}: {chain[-1]!r} inherits from unknown {current!r}")
    resolved: dict = {}
    for link in reversed(chain):
        resolved = _merged(resolved, {k: v for k, v in configurations[link].items() if k != "inherits_from"})
    return resolved


def _merged(base: dict, override: dict) -> dict:
    result = copy.deepcopy(base)
    for key, value in override.items():
        result[key] = _merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
    return result


def validate_plans(plans: dict, path: Path) -> None:
    """Raise an SDMCError that lists every invalid field of `plans` (read from `path`)."""
    problems = _top_level_problems(plans)
    if not problems:
        for name in plans["configurations"]:
            try:
                problems += [f"configuration {name!r}: {p}" for p in _configuration_problems(configuration(plans, name), plans)]
            except SDMCError as error:
                problems.append(str(error))
    if problems:
        raise SDMCError(f"{path}: invalid plans:\n  " + "\n  ".join(problems))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _maps_to_objects(value) -> bool:
    return isinstance(value, dict) and all(isinstance(item, dict) for item in value.values())


def _top_level_problems(plans) -> list[str]:
    """Missing keys and wrong JSON types that keep the configurations from being read at all."""
    if not isinstance(plans, dict):
        return [f"expected a JSON object, found a {type(plans).__name__}"]
    if missing := [key for key in TOP_LEVEL_KEYS if key not in plans]:
        return [f"missing top-level key {key!r}" for key in missing]
    problems = []
    if not isinstance(plans["num_input_channels_raw"], int) or plans["num_input_channels_raw"] < 1:
        problems.append(f"num_input_channels_raw must be a positive integer, got {plans['num_input_channels_raw']!r}")
    labels = plans["labels"]
    if not (isinstance(labels, dict) and all(isinstance(value, int) for value in labels.values())):
        problems.append(f"labels must map label names to integers, got {labels!r}")
    if not _maps_to_objects(plans["configurations"]):
        problems.append("configurations must map configuration names to objects")
    # names that become folder and file names: plain names, never a way out of their folder
    names = {"plans_name": plans["plans_name"], "dataset_name": plans["dataset_name"]}
    if isinstance(plans["configurations"], dict):
        names |= {f"configuration name {name!r}": name for name in plans["configurations"]}
    problems += [f"{field} must be a plain name (letters, digits, '_', '-', '.'), got {name!r}"
                 for field, name in names.items() if not _is_plain_name(name)]
    return problems


def _is_plain_name(name) -> bool:
    return isinstance(name, str) and PLAIN_NAME.fullmatch(name) is not None


def _configuration_problems(config: dict, plans: dict) -> list[str]:
    problems = []
    required = ("data_identifier", "input_channels", "image_size", "latent_size", "image_interpolation",
                "crop_to_head", "families")
    if missing := [key for key in required if key not in config]:
        return [f"missing {', '.join(missing)}"]
    if not _is_plain_name(config["data_identifier"]):
        problems.append(f"data_identifier must be a plain name (a folder of the preprocessed dataset), "
                        f"got {config['data_identifier']!r}")
    if not isinstance(config["crop_to_head"], bool):
        problems.append(f"crop_to_head must be true or false, got {config['crop_to_head']!r}")
    size = config["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 and s % NETWORK_DIVISOR == 0 for s in size)):
        problems.append(f"image_size must be two positive multiples of {NETWORK_DIVISOR} (the networks downsample "
                        f"five times){_nearest_allowed(size)}, got {size}")
    elif config["latent_size"] != [s // 8 for s in size]:
        problems.append(f"latent_size must be image_size / 8 = {[s // 8 for s in size]}, got {config['latent_size']}")
    if config["image_interpolation"] not in INTERPOLATIONS:
        problems.append(f"image_interpolation must be one of {INTERPOLATIONS}")
    channels = config["input_channels"]
    if not (isinstance(channels, list) and all(isinstance(channel, dict) for channel in channels)):
        problems.append("input_channels must be a list of objects")
    elif not channels:
        problems.append("input_channels is empty")
    else:
        for index, channel in enumerate(channels):
            problems += [f"input_channels[{index}]: {p}" for p in _channel_problems(channel, plans["num_input_channels_raw"])]
    if not _maps_to_objects(config["families"]):
        return problems + ["families must map family names to objects"]
    for family, settings in config["families"].items():
        if family not in FAMILIES:
            problems.append(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
            continue
        problems += [f"families.{family}: {p}" for p in _family_problems(settings)]
        if family == BASELINE_FAMILY and settings.get("loss") not in BASELINE_LOSSES:
            problems.append(f"families.{family}: loss must be one of {BASELINE_LOSSES}, got {settings.get('loss')!r}")
    return problems


def _nearest_allowed(size) -> str:
    sides = size if isinstance(size, list) else [size]
    if not all(_is_number(side) and side > 0 for side in sides):
        return ""
    nearest = sorted({max(1, int(side) // NETWORK_DIVISOR + up) * NETWORK_DIVISOR for side in sides for up in (0, 1)})
    return f": for example {', '.join(map(str, nearest))}"


def _channel_problems(channel: dict, num_raw_channels: int) -> list[str]:
    problems = []
    source = channel.get("source_channel")
    if not isinstance(source, int) or not 0 <= source < num_raw_channels:
        problems.append(f"source_channel must be an integer in 0..{num_raw_channels - 1}, got {source}")
    scheme = channel.get("normalization")
    if scheme not in NORMALIZATIONS:
        problems.append(f"normalization must be one of {NORMALIZATIONS}, got {scheme!r}")
    elif scheme == "window":
        window = channel.get("window")
        if not (isinstance(window, list) and len(window) == 2 and all(map(_is_number, window)) and window[0] < window[1]):
            problems.append(f"window must be [low, high] with low < high, got {window}")
    elif scheme == "z_score" and not (_is_number(channel.get("std")) and channel["std"] > 0
                                      and _is_number(channel.get("mean"))):
        problems.append("z_score needs a numeric mean and a positive std")
    if "png_from_hounsfield" in channel:  # absent from older plans: then no PNG is made from HU
        problems += _png_window_problems(channel["png_from_hounsfield"])
    return problems


def _png_window_problems(window) -> list[str]:
    """The window that remakes the PNG from HU must be a real interval, and say where it came from."""
    if not isinstance(window, dict):
        return [f"png_from_hounsfield must be an object {{low, high, source}}, got {window!r}"]
    problems = []
    low, high = window.get("low"), window.get("high")
    if not (_is_number(low) and _is_number(high) and math.isfinite(low) and math.isfinite(high) and low < high):
        problems.append(f"png_from_hounsfield low and high must be finite numbers (HU) with low < high, "
                        f"got low {low!r}, high {high!r}")
    if window.get("source") not in PNG_WINDOW_SOURCES:
        problems.append(f"png_from_hounsfield.source must be one of {PNG_WINDOW_SOURCES}, got {window.get('source')!r}")
    return problems


def _family_problems(settings: dict) -> list[str]:
    problems = []
    if not isinstance(settings.get("batch_size"), int) or settings["batch_size"] < 1:
        problems.append(f"batch_size must be a positive integer, got {settings.get('batch_size')}")
    if settings.get("selection_metric") not in SELECTION_METRICS:
        problems.append(f"selection_metric must be one of {SELECTION_METRICS}, got {settings.get('selection_metric')!r}")
    schedule = settings.get("schedule")
    if not isinstance(schedule, dict):
        return problems + [f"schedule must be an object, got {schedule!r}"]
    for key in ("epochs", "iterations_per_epoch", "val_iterations"):
        if not isinstance(schedule.get(key), int) or schedule[key] < 1:
            problems.append(f"schedule.{key} must be a positive integer, got {schedule.get(key)}")
    if not _is_number(schedule.get("learning_rate")) or not schedule["learning_rate"] > 0:
        problems.append(f"schedule.learning_rate must be positive, got {schedule.get('learning_rate')}")
    for key in ("weight_decay", "grad_clip"):
        if not _is_number(schedule.get(key)) or schedule[key] < 0:
            problems.append(f"schedule.{key} must be a non-negative number, got {schedule.get(key)!r}")
    if not isinstance(schedule.get("warmup_iterations", 0), int) or schedule.get("warmup_iterations", 0) < 0:
        problems.append("schedule.warmup_iterations must be a non-negative integer")
    if schedule.get("lr_decay", "constant") not in LR_DECAYS:
        problems.append(f"schedule.lr_decay must be one of {LR_DECAYS}")
    if schedule.get("optimizer") not in OPTIMIZERS:
        problems.append(f"schedule.optimizer must be one of {OPTIMIZERS}")
    if schedule.get("amp_dtype", "float16") not in AMP_DTYPES:
        problems.append(f"schedule.amp_dtype must be one of {AMP_DTYPES}, got {schedule.get('amp_dtype')!r}")
    if not isinstance(settings.get("networks"), dict) or not settings["networks"]:
        problems.append("networks must name at least one network size")
    elif isinstance(settings["networks"].get("denoiser"), dict):
        problems += [f"networks.denoiser.{p}" for p in _denoiser_problems(settings["networks"]["denoiser"])]
    diffusion = settings.get("diffusion")
    if isinstance(diffusion, dict) and diffusion.get("prediction_type") not in PREDICTION_TYPES:
        problems.append(f"diffusion.prediction_type must be one of {PREDICTION_TYPES}, got {diffusion.get('prediction_type')!r}")
    return problems


def _denoiser_problems(sizes: dict) -> list[str]:
    """The LDM UNet's structure: attention by downsampling rate, heads that divide every attention block."""
    multipliers, rates = sizes.get("channel_mult"), sizes.get("attention_resolutions")
    if not (isinstance(multipliers, list) and multipliers and all(isinstance(m, int) and m > 0 for m in multipliers)
            and isinstance(sizes.get("model_channels"), int) and sizes["model_channels"] > 0):
        return ["model_channels must be a positive integer and channel_mult a list of positive integers"]
    allowed = [2**level for level in range(len(multipliers))]
    if not (isinstance(rates, list) and all(rate in allowed for rate in rates)):
        return [f"attention_resolutions are LDM's downsampling rates of the latent (1 = full size); with "
                f"{len(multipliers)} levels they are among {allowed}, got {rates}"]
    heads = sizes.get("num_heads")
    widths = {sizes["model_channels"] * multipliers[level] for level, rate in enumerate(allowed) if rate in rates}
    widths.add(sizes["model_channels"] * multipliers[-1])  # the mid block's attention
    if not (isinstance(heads, int) and heads > 0 and all(width % heads == 0 for width in widths)):
        return [f"num_heads must divide the width of every attention block ({sorted(widths)}), got {heads}"]
    return []


def load_existing_plans(path: Path) -> dict | None:
    """Plans already at `path` (to keep a user's custom configurations), or None."""
    return read_json(path) if path.is_file() else None
