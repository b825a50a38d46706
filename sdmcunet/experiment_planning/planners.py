"""Planners: from a dataset fingerprint and a compute target to a plans file.

`SDMCPlanner` (the default) feeds the networks the organisers' PNG, as the published results
did, and CT windowed from the fingerprint when there is no PNG channel; `SDMCCTWindowsPlanner`
stacks three fixed brain windows of the Hounsfield units instead. Without a GPU target they
write small CPU plans that train in minutes on 2 cores; with one, the published sizes with
batch sizes fitted to the memory target. Add a planner by subclassing one and naming it
(entry point group `sdmcunet.planners`, or `-pl package.module:ClassName`).
"""

import math

from sdmcunet.experiment_planning import presets
from sdmcunet.raw_dataset import DATASET_FILE, DEFAULT_PNG_WINDOW, measured_png_window
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.registry import Registry

CONFIGURATION = "2d"


class SDMCPlanner:
    plans_name = "sdmcPlans"

    def __init__(self, fingerprint: dict, dataset_json: dict, dataset_name: str, gpu_memory_gb: float | None):
        self.fingerprint = fingerprint
        self.dataset_json = dataset_json
        self.dataset_name = dataset_name
        self.gpu_memory_gb = gpu_memory_gb
        self.channel_names = {int(c): name for c, name in dataset_json["channel_names"].items()}

    def plan(self) -> dict:
        families, image_size = self.families_and_image_size()
        configuration = {
            "data_identifier": f"{self.plans_name}_{CONFIGURATION}",
            "input_channels": self.input_channels(),
            "crop_to_head": True,
            "image_size": [image_size, image_size],
            "latent_size": [image_size // 8, image_size // 8],
            "image_interpolation": "bilinear",
            "families": families,
        }
        return {
            "plans_name": self.plans_name,
            "planner": type(self).__name__,
            "dataset_name": self.dataset_name,
            "compute_target": {"device": "cpu" if self.gpu_memory_gb is None else "cuda",
                               "gpu_memory_target_gb": self.gpu_memory_gb},
            "num_input_channels_raw": len(self.channel_names),
            "labels": self.dataset_json["labels"],
            "foreground_intensity_properties_per_channel":
                self.fingerprint["foreground_intensity_properties_per_channel"],
            "configurations": {CONFIGURATION: configuration},
        }

    # --- inputs -------------------------------------------------------------------------
    def input_channels(self) -> list[dict]:
        by_name = {name.upper(): channel for channel, name in self.channel_names.items()}
        if "PNG" in by_name:  # the published input: the organisers' PNG, min-max per image
            return [{"name": "PNG", "source_channel": by_name["PNG"], "normalization": "min_max_per_image",
                     "png_from_hounsfield": self.png_window()}]
        if "CT" in by_name:
            return [self.fingerprint_window(by_name["CT"])]
        return [{"name": name, "source_channel": channel, "normalization": "min_max_per_image"}
                for channel, name in sorted(self.channel_names.items())]

    def png_window(self) -> dict:
        """The window that remakes the PNG channel from HU, so the model can segment DICOM-only input: the
        one the converter measured on the dataset's DICOM/PNG pairs, else the standard brain window."""
        measured = measured_png_window(self.dataset_json, f"{DATASET_FILE} of {self.dataset_name}")
        low, high = measured or DEFAULT_PNG_WINDOW
        return {"low": low, "high": high, "source": "measured" if measured else "default"}

    def fingerprint_window(self, channel: int) -> dict:
        """CT clipped to the 0.5-99.5 percentiles of the lesions' HU, as nnU-Net clips CT."""
        statistics = self.fingerprint["foreground_intensity_properties_per_channel"][str(channel)]
        if statistics["percentile_00_5"] is None:
            raise SDMCError("the dataset has no labelled lesion pixel: no CT window can be derived from it")
        low, high = statistics["percentile_00_5"], statistics["percentile_99_5"]
        return {"name": "CT", "source_channel": channel, "normalization": "window",
                "window": [low, high if high > low else low + 1.0]}

    # --- sizes --------------------------------------------------------------------------
    def image_size(self, families: dict) -> int:
        """The median slice side rounded to the nearest size every network runs on unpadded (at least
        one such size, at most the published 256, or 128 on the CPU): small slices are enlarged."""
        multiple = math.lcm(*(presets.native_image_multiple(name, family) for name, family in families.items()))
        wanted = presets.CPU_IMAGE_SIZE if self.gpu_memory_gb is None else presets.PUBLISHED_IMAGE_SIZE
        smallest = -(-presets.SMALLEST_IMAGE_SIZE // multiple) * multiple
        largest = max(smallest, wanted // multiple * multiple)
        median = min(self.fingerprint["median_shape"])
        return min(largest, max(smallest, round(median / multiple) * multiple))

    def families_and_image_size(self) -> tuple[dict, int]:
        if self.gpu_memory_gb is None:
            families = presets.cpu_families()
            return families, self.image_size(families)
        n_cases = len(self.fingerprint["cases"])
        for size_preset in presets.GPU_SDMC_SIZE_ORDER:  # the published size when it fits
            families = presets.with_sdmc_size(presets.gpu_families(), size_preset)
            image_size = self.image_size(families)
            batch_sizes = {name: self.largest_batch(name, family, image_size) for name, family in families.items()}
            if min(batch_sizes.values()) > 0:
                break
        else:
            raise SDMCError(
                f"even the smallest GPU networks do not fit one {image_size}x{image_size} image into the GPU memory "
                f"target of {self.gpu_memory_gb} GB; raise -gpu_memory_target or plan for the CPU"
            )
        for name, family in families.items():
            family["batch_size"] = min(batch_sizes[name], family["batch_size"])  # published batch at most
            family["schedule"]["iterations_per_epoch"] = self.iterations_per_epoch(n_cases, family["batch_size"])
        return families, image_size

    def largest_batch(self, family_name: str, family: dict, image_size: int) -> int:
        try:
            models = presets.memory_models(family_name, family, len(self.input_channels()), image_size)
        except (RuntimeError, ValueError) as error:  # sizes the networks cannot run on
            raise SDMCError(f"cannot estimate the GPU memory of the {family_name} networks on {image_size}x{image_size} "
                            f"images ({str(error).splitlines()[0]}); check their sizes in the presets or plans") from None
        return min(model.largest_batch(self.gpu_memory_gb) for model in models)

    @staticmethod
    def iterations_per_epoch(n_cases: int, batch_size: int) -> int:
        """One pass over the training folds (4/5 of the cases), as the published schedules count epochs."""
        return max(1, math.ceil(0.8 * n_cases / batch_size))


class SDMCCTWindowsPlanner(SDMCPlanner):
    """Three brain windows of the Hounsfield units stacked as input channels."""

    plans_name = "sdmcCTWindowsPlans"
    WINDOWS = {"brain": (40, 80), "subdural": (80, 200), "stroke": (32, 8)}  # (level, width) in HU

    def input_channels(self) -> list[dict]:
        ct = [channel for channel, name in self.channel_names.items() if name.upper() == "CT"]
        if not ct:
            raise SDMCError(f"{type(self).__name__} needs a 'CT' channel (Hounsfield units); the dataset has "
                            f"{list(self.channel_names.values())}. Use the default planner.")
        return [{"name": f"CT {name} window", "source_channel": ct[0], "normalization": "window",
                 "window": [level - width / 2, level + width / 2]} for name, (level, width) in self.WINDOWS.items()]


PLANNERS: Registry[SDMCPlanner] = Registry("planner", "sdmcunet.planners", SDMCPlanner)
for _planner in (SDMCPlanner, SDMCCTWindowsPlanner):
    PLANNERS.register(_planner)
