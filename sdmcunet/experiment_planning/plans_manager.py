"""Typed access to validated plans (nnU-Net's PlansManager / ConfigurationManager): every field of
docs/plans.md is read here, by name, so no other module spells the plans' JSON keys.

    plans = PlansManager.load(path)                 # validated on load
    config = plans.configuration("2d")              # `inherits_from` resolved
    config.image_size, config.input_channels, config.family("sdmc").schedule.learning_rate
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sdmcunet.experiment_planning.plans import configuration, load_plans


@dataclass(frozen=True)
class InputChannel:
    """One network input channel: the raw channel it is computed from and its normalisation."""

    name: str
    source_channel: int
    normalization: str  # min_max_per_image, window or z_score
    window: tuple[float, float] | None  # (low, high) in the raw channel's units
    mean: float | None  # z_score
    std: float | None
    # (low, high) HU that remake the PNG channel from a DICOM-only input; None in plans older than it
    png_from_hounsfield: tuple[float, float] | None = None

    @classmethod
    def of(cls, content: dict) -> "InputChannel":
        window, png_window = content.get("window"), content.get("png_from_hounsfield")
        return cls(content.get("name", f"channel {content['source_channel']}"), content["source_channel"],
                   content["normalization"], tuple(window) if window else None, content.get("mean"), content.get("std"),
                   (float(png_window["low"]), float(png_window["high"])) if png_window else None)


@dataclass(frozen=True)
class Schedule:
    """A family's training schedule (`families.<family>.schedule`)."""

    epochs: int
    iterations_per_epoch: int
    val_iterations: int
    optimizer: str  # adam or adamw
    learning_rate: float
    weight_decay: float
    warmup_iterations: int
    lr_decay: str  # constant or poly
    grad_clip: float
    amp_dtype: str  # float16 or bfloat16: autocast on CUDA
    adam_betas: tuple[float, float]
    ema_decay: float | None  # sdmc

    @classmethod
    def of(cls, content: dict) -> "Schedule":
        return cls(content["epochs"], content["iterations_per_epoch"], content["val_iterations"], content["optimizer"],
                   content["learning_rate"], content["weight_decay"], content.get("warmup_iterations", 0),
                   content.get("lr_decay", "constant"), content["grad_clip"], content.get("amp_dtype", "float16"),
                   tuple(content.get("adam_betas", (0.9, 0.999))), content.get("ema_decay"))


@dataclass(frozen=True)
class FamilySettings:
    """What a trainer family's networks and training are (`families.<family>`)."""

    name: str  # baseline, sdmc or mask_autoencoder
    content: dict

    @property
    def batch_size(self) -> int:
        return self.content["batch_size"]

    @property
    def selection_metric(self) -> str:
        return self.content["selection_metric"]

    @cached_property
    def schedule(self) -> Schedule:
        return Schedule.of(self.content["schedule"])

    @property
    def networks(self) -> dict:
        """Network sizes by network name, as docs/plans.md lists them."""
        return self.content["networks"]

    @property
    def size_preset(self) -> str | None:
        return self.content.get("size_preset")

    @property
    def loss(self) -> str | None:
        """(baseline) dice_ce, dice or ce."""
        return self.content.get("loss")

    @property
    def diffusion(self) -> dict | None:
        """(sdmc) the noise schedule and `prediction_type`."""
        return self.content.get("diffusion")

    @property
    def loss_weights(self) -> dict | None:
        """(mask_autoencoder) l1, kl, dice, perceptual, adversarial."""
        return self.content.get("loss_weights")


@dataclass(frozen=True)
class ConfigurationManager:
    """One configuration of the plans, `inherits_from` resolved."""

    plans: "PlansManager"
    name: str
    content: dict

    @property
    def data_identifier(self) -> str:
        return self.content["data_identifier"]

    @cached_property
    def input_channels(self) -> list[InputChannel]:
        return [InputChannel.of(channel) for channel in self.content["input_channels"]]

    @property
    def crop_to_head(self) -> bool:
        return self.content["crop_to_head"]

    @property
    def image_size(self) -> tuple[int, int]:
        """(rows, columns) the networks see."""
        rows, columns = self.content["image_size"]
        return rows, columns

    @property
    def latent_size(self) -> tuple[int, int]:
        rows, columns = self.content["latent_size"]
        return rows, columns

    @property
    def image_interpolation(self) -> str:
        return self.content["image_interpolation"]

    @property
    def families(self) -> list[str]:
        return list(self.content["families"])

    def has_family(self, family: str) -> bool:
        return family in self.content["families"]

    def family(self, family: str) -> FamilySettings:
        return FamilySettings(family, self.content["families"][family])

    @property
    def num_input_channels(self) -> int:
        return len(self.content["input_channels"])


@dataclass(frozen=True)
class PlansManager:
    """Validated plans; `content` is the JSON as written."""

    content: dict

    @classmethod
    def load(cls, path: Path) -> "PlansManager":
        return cls(load_plans(path))

    @property
    def plans_name(self) -> str:
        return self.content["plans_name"]

    @property
    def planner(self) -> str:
        return self.content["planner"]

    @property
    def dataset_name(self) -> str:
        return self.content["dataset_name"]

    @property
    def compute_target(self) -> dict:
        """`device` (cpu or cuda) and `gpu_memory_target_gb`: what the sizes were chosen for."""
        return self.content.get("compute_target", {})

    @property
    def labels(self) -> dict[str, int]:
        return self.content["labels"]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        """The foreground classes' names, in label order."""
        return [name for name, _ in sorted(self.labels.items(), key=lambda item: item[1])][1:]

    def configuration(self, name: str) -> ConfigurationManager:
        return ConfigurationManager(self, name, configuration(self.content, name))
