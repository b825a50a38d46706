"""`sdmc_extract_fingerprint -d ID`: what the planner needs to know about a raw dataset.

Foreground intensity statistics follow nnU-Net v2 exactly, so both give the same numbers on the
same dataset: per case, `int(1e8 // n_cases)` foreground pixels (label > 0) are drawn with
replacement by `numpy.random.RandomState(1234)` from each float32 channel, and the statistics
are taken over all drawn samples. Shapes, spacings, the classes present per case and the
head's extent are recorded besides.
"""

import argparse
import hashlib
import logging
from functools import partial
from pathlib import Path

import numpy as np

from sdmcunet import paths
from sdmcunet.imageio import read_label_slice
from sdmcunet.raw_dataset import DATASET_FILE, RawCase, find_dataset, load_dataset_json, read_raw_image, training_cases
from sdmcunet.utils.cli import add_num_processes_argument, configure_logging, console_entry, non_negative_int
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_json, read_json
from sdmcunet.utils.parallel import parallel_map
from sdmcunet.results.layout import FINGERPRINT_FILE

log = logging.getLogger("sdmcunet.fingerprint")
FOREGROUND_SAMPLES_TOTAL = 10e7  # nnU-Net v2's num_foreground_voxels_for_intensitystats
SAMPLING_SEED = 1234
PERCENTILES = (0.5, 50.0, 99.5)


def analyse_case(case: RawCase, samples_per_case: int) -> dict:
    """Shape, spacing, classes present and foreground intensity samples of one case."""
    channels, spacings = zip(*(read_raw_image(path) for path in case.images))
    label_map, label_spacing = read_label_slice(case.label)
    image = np.stack(channels).astype(np.float32)
    if not np.isfinite(image).all():
        raise SDMCError(f"{case.images[0].parent}: a channel of case {case.label.name} holds NaN or infinite values")
    foreground = label_map > 0
    random_state = np.random.RandomState(SAMPLING_SEED)
    samples = [
        random_state.choice(channel[foreground], samples_per_case, replace=True) if foreground.any()
        else np.empty(0, np.float32)
        for channel in image
    ]
    return {
        "shape": list(label_map.shape),
        "spacing": list(label_spacing or spacings[0] or (1.0, 1.0)),
        "classes": sorted(int(value) for value in np.unique(label_map)),
        "foreground_pixels": int(foreground.sum()),
        "samples": samples,
    }


def intensity_statistics(samples: np.ndarray) -> dict:
    if samples.size == 0:
        return {key: None for key in ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")}
    low, median, high = np.percentile(samples, PERCENTILES)
    return {
        "mean": float(np.mean(samples, dtype=np.float64)), "median": float(median),
        "std": float(np.std(samples, dtype=np.float64)),
        "min": float(np.min(samples)), "max": float(np.max(samples)),
        "percentile_00_5": float(low), "percentile_99_5": float(high),
    }


def raw_dataset_digest(folder: Path) -> str:
    """Changes whenever a raw file is added, removed or rewritten."""
    digest = hashlib.sha256()
    for path in sorted([folder / DATASET_FILE, *(folder / "imagesTr").iterdir(), *(folder / "labelsTr").iterdir()]):
        status = path.stat()
        digest.update(f"{path.name}:{status.st_size}:{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def extract_fingerprint(raw_folder: Path, output_folder: Path, num_processes: int = 1, overwrite: bool = False) -> dict:
    """Compute (or reuse, when the raw dataset did not change) `dataset_fingerprint.json`."""
    target = output_folder / FINGERPRINT_FILE
    digest = raw_dataset_digest(raw_folder)
    if target.is_file() and not overwrite:
        existing = read_json(target)
        if existing.get("raw_dataset_digest") == digest:
            log.info("fingerprint of %s is up to date", raw_folder.name)
            return existing
    dataset = load_dataset_json(raw_folder)
    cases = training_cases(raw_folder, dataset)
    analyse = partial(analyse_case, samples_per_case=int(FOREGROUND_SAMPLES_TOTAL // len(cases)))
    results = list(parallel_map(analyse, cases.values(), num_processes, "extracting fingerprint"))
    fingerprint = _summarise(cases, results, dataset.channel_names)
    fingerprint["raw_dataset_digest"] = digest
    atomic_write_json(target, fingerprint)
    return fingerprint


def _summarise(cases: dict[str, RawCase], results: list[dict], channel_names: dict[int, str]) -> dict:
    statistics = {
        str(channel): intensity_statistics(np.concatenate([result["samples"][channel] for result in results]))
        for channel in channel_names
    }
    shapes = np.array([result["shape"] for result in results])
    spacings = np.array([result["spacing"] for result in results])
    return {
        "cases": list(cases),
        "shapes": shapes.tolist(),
        "spacings": spacings.tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "classes_per_case": [result["classes"] for result in results],
        "foreground_pixels_per_case": [result["foreground_pixels"] for result in results],
        "channel_names": {str(channel): name for channel, name in channel_names.items()},
        "foreground_intensity_properties_per_channel": statistics,
    }


def dataset_folders(dataset_id: int) -> tuple[Path, Path]:
    """The raw folder of a dataset and its preprocessed folder (same name)."""
    raw_folder = find_dataset(paths.raw_root(), dataset_id)
    return raw_folder, paths.preprocessed_root() / raw_folder.name


@console_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdmc_extract_fingerprint", description=__doc__.splitlines()[0])
    parser.add_argument("-d", dest="dataset_id", type=non_negative_int, required=True)
    add_num_processes_argument(parser)
    parser.add_argument("--clean", action="store_true", help="recompute even if the fingerprint is up to date")
    args = parser.parse_args(argv)
    configure_logging()
    raw_folder, output_folder = dataset_folders(args.dataset_id)
    extract_fingerprint(raw_folder, output_folder, args.num_processes, args.clean)
    print(f"wrote {output_folder / FINGERPRINT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
