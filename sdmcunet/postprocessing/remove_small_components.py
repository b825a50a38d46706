"""Removing small lesion components, decided on cross-validation; `sdmc_apply_postprocessing`.

    sdmc_apply_postprocessing -i PREDICTIONS -o OUTPUT -pp postprocessing.json

Per foreground class, 8-connected components smaller than the class's threshold (pixels) become
non-stroke. A threshold is kept only if it raises the cross-validation Stroke2021 DSC Mean
(docs/design.md §7); `postprocessing.json` records the choice and the score of every candidate.

Each output label map keeps the format and geometry of its input. `postprocessing_info.json`
records the input folder (and what made it) and the postprocessing file; an output folder made
otherwise is refused unless `--overwrite` is given.
"""

import argparse
import functools
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from sdmcunet.evaluation.metrics import FOREGROUND_LABELS, nanmean, slice_scores, to_json_safe
from sdmcunet.results.trained_model import CasePair
from sdmcunet.imageio import write_label_map
from sdmcunet.imageio.label_map_folders import label_map_files, read_label_map, read_label_map_with_geometry
from sdmcunet.labels import CLASS_ABBREVIATIONS
from sdmcunet.utils.cli import add_num_processes_argument, configure_logging, console_entry
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_json, read_json
from sdmcunet.utils.output_record import OutputRecord, claim_output_folder, made_by_of, write_record
from sdmcunet.utils.parallel import parallel_map

log = logging.getLogger("sdmcunet.postprocessing")
COMMAND = "sdmc_apply_postprocessing"
POSTPROCESSING_FILE = "postprocessing.json"
THRESHOLDS_KEY = "remove_components_smaller_than"
CANDIDATE_MIN_SIZES = (0, 5, 10, 20, 50, 100)  # pixels; 0 = off
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
# A candidate must beat "off" by more than rounding noise to be kept.
MIN_IMPROVEMENT = 1e-9


def remove_small_components(label_map: np.ndarray, min_sizes: Mapping[int, int]) -> np.ndarray:
    """A copy where each class's 8-connected components of fewer than min_sizes[class] pixels are 0."""
    cleaned = label_map.copy()
    for label, min_size in min_sizes.items():
        if min_size <= 0:
            continue
        components, _ = ndimage.label(label_map == label, structure=EIGHT_CONNECTED)
        small = np.bincount(components.ravel()) < min_size
        small[0] = False  # component 0 is everything else
        cleaned[small[components]] = 0
    return cleaned


def candidate_dice(pair: CasePair, candidates: tuple[int, ...]) -> np.ndarray:
    """Stroke2021 DSC of the case per candidate threshold and class, shape (candidates, classes).

    Removing class c's components only turns c pixels into background, so the DSC of every
    other foreground class is unchanged: one threshold for all classes at a time gives each
    class's DSC under that threshold.
    """
    reference, _ = read_label_map(pair.reference)
    prediction, _ = read_label_map(pair.prediction)
    return np.stack([
        slice_scores(remove_small_components(prediction, dict.fromkeys(FOREGROUND_LABELS, min_size)), reference)["DSC"]
        for min_size in candidates
    ])


def decide_postprocessing(pairs: list[CasePair], num_processes: int,
                          candidates: tuple[int, ...] = CANDIDATE_MIN_SIZES) -> dict[str, Any]:
    """The postprocessing.json content: per class the threshold with the best cross-validation DSC,
    kept only where it beats no removal (0); pairs are cross-validation predictions and references."""
    candidates = (0, *sorted(set(candidates) - {0}))
    per_case = parallel_map(functools.partial(candidate_dice, candidates=candidates), pairs, num_processes,
                            "trying postprocessing")
    class_dice = nanmean(np.stack(list(per_case)), axis=0)  # (candidates, classes), NaN where a class is absent
    chosen, scores = {}, {}
    for label in FOREGROUND_LABELS:
        dice = class_dice[:, label]
        best = int(np.nanargmax(dice)) if not np.isnan(dice).all() else 0
        chosen[label] = candidates[best] if dice[best] > dice[0] + MIN_IMPROVEMENT else 0
        scores[CLASS_ABBREVIATIONS[label]] = {str(size): float(value) for size, value in zip(candidates, dice)}
    without = nanmean([class_dice[0, label] for label in FOREGROUND_LABELS])
    with_chosen = nanmean([class_dice[candidates.index(chosen[label]), label] for label in FOREGROUND_LABELS])
    log.info("postprocessing: remove components smaller than %s px (0 = off); DSC Mean %.4f -> %.4f",
             {CLASS_ABBREVIATIONS[label]: size for label, size in chosen.items()}, without, with_chosen)
    return {
        THRESHOLDS_KEY: {str(label): size for label, size in chosen.items()},
        "connectivity": 8,
        "selection": "per class, the candidate with the highest cross-validation Stroke2021 DSC of that class, "
                     "kept only if it beats no removal (0); the DSC Mean is their average",
        "DSC_Mean_without": without,
        "DSC_Mean_with": with_chosen,
        "DSC_per_candidate": scores,
    }


def helps(postprocessing: Mapping[str, Any]) -> bool:
    return any(size > 0 for size in postprocessing[THRESHOLDS_KEY].values())


def write_postprocessing(path: Path, postprocessing: Mapping[str, Any]) -> None:
    atomic_write_json(path, to_json_safe(postprocessing))


def load_min_sizes(path: Path) -> dict[int, int]:
    """The per-class thresholds of a postprocessing.json; an error naming the file if malformed."""
    content = read_json(path)
    thresholds = content.get(THRESHOLDS_KEY) if isinstance(content, dict) else None
    try:
        min_sizes = {int(label): int(size) for label, size in thresholds.items()}
    except (AttributeError, TypeError, ValueError):
        raise SDMCError(f"{path}: expected '{THRESHOLDS_KEY}': {{label: pixels}}, as sdmc_find_best_configuration "
                        "writes") from None
    if any(size < 0 for size in min_sizes.values()) or any(label not in FOREGROUND_LABELS for label in min_sizes):
        raise SDMCError(f"{path}: thresholds must be >= 0 and labels among {list(FOREGROUND_LABELS)}, got {min_sizes}")
    return min_sizes


def postprocess_file(paths: tuple[Path, Path], min_sizes: Mapping[int, int]) -> Path:
    source, target = paths
    label_map, geometry = read_label_map_with_geometry(source)
    write_label_map(remove_small_components(label_map, min_sizes), target, geometry)
    return target


def apply_postprocessing(input_folder: Path, output_folder: Path, postprocessing_file: Path, num_processes: int,
                         overwrite: bool = False) -> list[Path]:
    """Postprocess every label map of `input_folder` into `output_folder` (same names and formats) as
    `postprocessing_file` says; `output_folder` must not hold outputs made otherwise (unless `overwrite`:
    they are deleted)."""
    min_sizes = load_min_sizes(postprocessing_file)
    files = label_map_files(input_folder)
    if not files:
        raise SDMCError(f"{input_folder}: no label maps (.png, .nii.gz, .nii)")
    if output_folder.resolve() == input_folder.resolve():
        raise SDMCError(f"{output_folder}: the output folder must differ from the input folder")
    record = OutputRecord(COMMAND, {
        "input": str(input_folder.resolve()), "input_made_by": made_by_of(input_folder),
        "postprocessing_file": str(postprocessing_file.resolve()),
        THRESHOLDS_KEY: {str(label): size for label, size in sorted(min_sizes.items())},
    })
    claim_output_folder(output_folder, record, overwrite)
    jobs = [(path, output_folder / name) for name, path in files.items()]
    written = list(parallel_map(functools.partial(postprocess_file, min_sizes=min_sizes), jobs, num_processes,
                                "postprocessing"))
    write_record(output_folder, record, label_maps=len(written))
    return written


@console_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdmc_apply_postprocessing", description=__doc__.splitlines()[0])
    parser.add_argument("-i", dest="input", type=Path, required=True, help="folder of predicted label maps")
    parser.add_argument("-o", dest="output", type=Path, required=True, help="output folder")
    parser.add_argument("-pp", dest="postprocessing", type=Path, required=True,
                        help=f"{POSTPROCESSING_FILE} written by sdmc_find_best_configuration")
    add_num_processes_argument(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="in a folder made from another input or postprocessing file, delete its outputs first "
                        "(else it is refused)")
    args = parser.parse_args(argv)
    configure_logging()
    written = apply_postprocessing(args.input, args.output, args.postprocessing, args.num_processes, args.overwrite)
    print(f"wrote {len(written)} postprocessed label maps to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
