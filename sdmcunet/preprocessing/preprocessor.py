"""`sdmc_preprocess -d ID`: raw cases -> normalised, resized arrays the trainers read.

Per case, in `preprocessed/Dataset.../<data_identifier>/`: `{case}.npy` (input channels x size
x size, float16), `{case}_seg.npy` (size x size, uint8), and `{case}.json` (geometry to map
predictions back, classes present, sampled pixel locations of each lesion class for
foreground oversampling). The json is written last and records what the case was made from;
a case whose json matches the plan and the raw files is skipped, so an interrupted run
completes when run again. The original labels are copied to `gt_segmentations/`.
"""

import hashlib
import json
import logging
import shutil
from functools import partial
from pathlib import Path

import numpy as np

from sdmcunet.experiment_planning.plans_manager import ConfigurationManager
from sdmcunet.imageio import read_label_slice
from sdmcunet.preprocessing.geometry import Geometry, head_box, image_to_network, label_to_network, plan_geometry
from sdmcunet.preprocessing.normalization import normalise
from sdmcunet.raw_dataset import RawCase, read_raw_image
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_output, atomic_write_json, read_json
from sdmcunet.utils.parallel import parallel_map

log = logging.getLogger("sdmcunet.preprocess")
LOCATIONS_PER_CLASS = 1000
PLAN_KEYS = ("input_channels", "crop_to_head", "image_size", "image_interpolation")


def preprocessing_key(configuration: ConfigurationManager, num_classes: int) -> str:
    """Changes when any setting that shapes the preprocessed arrays changes."""
    relevant = {key: configuration.content[key] for key in PLAN_KEYS} | {"num_classes": num_classes, "version": 1}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _source_stamp(case: RawCase) -> list:
    return [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in [*case.images, case.label]]


def preprocess_case(case: RawCase, configuration: ConfigurationManager, channel_names: dict[int, str], num_classes: int, seed: int):
    """One raw case -> (input array, label map, properties) in the network geometry."""
    raw = [read_raw_image(path) for path in case.images]
    raw_channels = np.stack([array for array, _ in raw]).astype(np.float32)
    label_map, _ = read_label_slice(case.label)
    if raw_channels.shape[1:] != label_map.shape:
        raise SDMCError(f"{case.label}: shape {label_map.shape} differs from its image {raw_channels.shape[1:]}")
    if label_map.max(initial=0) >= num_classes:
        raise SDMCError(f"{case.label}: label value {int(label_map.max())} outside 0..{num_classes - 1}")
    inputs, geometry = preprocess_image(raw_channels, configuration, channel_names, case.images[0])
    network_labels = label_to_network(label_map.astype(np.int64), geometry, num_classes)
    properties = {
        "geometry": geometry.to_json(),
        "classes": sorted(int(value) for value in np.unique(label_map)),
        "class_locations": _class_locations(network_labels, num_classes, seed),
    }
    return inputs.astype(np.float16), network_labels, properties


def preprocess_image(raw_channels: np.ndarray, configuration: ConfigurationManager, channel_names: dict[int, str],
                     source: Path | str) -> tuple[np.ndarray, Geometry]:
    """(raw channels, H, W) -> network input (input channels, rows, columns) float32 and the geometry
    that maps predictions back. Raw channels not used by the plans may hold anything (e.g. zeros)."""
    if not np.isfinite(raw_channels).all():
        raise SDMCError(f"{source}: holds NaN or infinite intensities")
    if raw_channels.shape[1] == 0 or raw_channels.shape[2] == 0:
        raise SDMCError(f"{source}: empty image (shape {raw_channels.shape[1:]})")
    shape = raw_channels.shape[1:]
    crop = (0, shape[0], 0, shape[1])
    if configuration.crop_to_head:
        head_channel = configuration.input_channels[0].source_channel
        crop = head_box(raw_channels[head_channel], channel_names[head_channel].upper() == "CT")
    geometry = plan_geometry(shape, crop, configuration.image_size)
    inputs = image_to_network(normalise(raw_channels, configuration.input_channels), geometry,
                              configuration.image_interpolation)
    return inputs, geometry


def _class_locations(label_map: np.ndarray, num_classes: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    locations = {}
    for label in range(1, num_classes):
        pixels = np.argwhere(label_map == label)
        if len(pixels):
            chosen = rng.choice(len(pixels), min(LOCATIONS_PER_CLASS, len(pixels)), replace=False)
            locations[str(label)] = pixels[np.sort(chosen)].tolist()
    return locations


def _process_and_save(item: tuple[str, RawCase], output: Path, configuration: ConfigurationManager, channel_names: dict[int, str],
                      num_classes: int, key: str) -> str:
    case_id, case = item
    seed = int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16)  # same samples on every run
    inputs, labels, properties = preprocess_case(case, configuration, channel_names, num_classes, seed)
    for suffix, array in ((".npy", inputs), ("_seg.npy", labels)):
        with atomic_output(output / f"{case_id}{suffix}") as temporary:
            np.save(temporary, array)
    atomic_write_json(output / f"{case_id}.json", properties | {"preprocessing_key": key, "source": _source_stamp(case)})
    return case_id


def _up_to_date(output: Path, case_id: str, case: RawCase, key: str) -> bool:
    path = output / f"{case_id}.json"
    if not path.is_file() or not (output / f"{case_id}.npy").is_file() or not (output / f"{case_id}_seg.npy").is_file():
        return False
    properties = read_json(path)
    return properties.get("preprocessing_key") == key and properties.get("source") == _source_stamp(case)


def preprocess_dataset(cases: dict[str, RawCase], output: Path, gt_folder: Path, configuration: ConfigurationManager,
                       channel_names: dict[int, str], num_classes: int, num_processes: int = 1) -> int:
    """Preprocess every case not already up to date; returns how many were processed."""
    output.mkdir(parents=True, exist_ok=True)
    _check_disk_space(output, len(cases), configuration)
    key = preprocessing_key(configuration, num_classes)
    _copy_ground_truth(cases, gt_folder)
    pending = [(case_id, case) for case_id, case in cases.items() if not _up_to_date(output, case_id, case, key)]
    log.info("%d cases to preprocess, %d up to date", len(pending), len(cases) - len(pending))
    work = partial(_process_and_save, output=output, configuration=configuration, channel_names=channel_names,
                   num_classes=num_classes, key=key)
    for _ in parallel_map(work, pending, num_processes, "preprocessing", ordered=False):
        pass
    return len(pending)


def _copy_ground_truth(cases: dict[str, RawCase], gt_folder: Path) -> None:
    """The original label maps, for evaluation in the original geometry."""
    gt_folder.mkdir(parents=True, exist_ok=True)
    for case in cases.values():
        target = gt_folder / case.label.name
        if not target.is_file() or target.stat().st_size != case.label.stat().st_size:
            with atomic_output(target) as temporary:
                shutil.copyfile(case.label, temporary)


def _check_disk_space(output: Path, num_cases: int, configuration: ConfigurationManager) -> None:
    height, width = configuration.image_size
    per_case = height * width * (2 * configuration.num_input_channels + 1) + 64 * 1024  # arrays + json + label
    needed = int(1.1 * num_cases * per_case)
    free = shutil.disk_usage(output).free
    if free < needed:
        raise SDMCError(f"{output}: preprocessing needs about {needed / 2**30:.2f} GB but only "
                        f"{free / 2**30:.2f} GB are free; free some space or set SDMC_preprocessed elsewhere")
