"""Label maps for new slices from one or more folds of a trained model.

Reading and preprocessing run in worker processes ahead of the network, and writing the
outputs runs behind it, so the network is rarely kept waiting. Fold (and mirror, and noise
draw) probabilities are averaged in the network geometry, then mapped back to each slice's
original geometry once.
"""

import logging
from dataclasses import dataclass
from functools import partial
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from sdmcunet.experiment_planning.plans_manager import ConfigurationManager
from sdmcunet.imageio import DEFAULT_GEOMETRY, ImageGeometry
from sdmcunet.inference.export import export_prediction
from sdmcunet.inference.input_files import InputCase, InputListing, read_case_channels
from sdmcunet.inference.model_loading import LoadedModel
from sdmcunet.inference.overlays import display_image
from sdmcunet.preprocessing.geometry import Geometry
from sdmcunet.preprocessing.preprocessor import preprocess_image
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import make_folder
from sdmcunet.utils.parallel import worker_pool

log = logging.getLogger("sdmcunet.inference")
MIRROR_AXIS = -1  # left-right, the only mirroring of the training augmentation
CASES_IN_FLIGHT = 256  # cases read ahead of the network at most (bounds memory on large inputs)


@dataclass(frozen=True)
class PredictionOptions:
    save_probabilities: bool = False
    overlays: bool = False
    tta: bool = False
    n_samples: int = 1  # noise draws per fold (stochastic models: SDMC)
    seed: int = 0  # of the noise draws, for reproducible predictions
    overwrite: bool = False


@dataclass
class PreparedCase:
    case: InputCase
    inputs: np.ndarray  # (input channels, rows, columns) float32
    geometry: Geometry  # from the original slice to the network's input
    image_geometry: ImageGeometry  # where the original slice's pixels lie: its label map's too
    display: np.ndarray | None  # uint8 grey picture of the slice, for overlays


@dataclass
class PredictionRun:
    predicted: list[str]
    skipped: list[str]  # outputs already there
    problems: dict[str, str]  # input file or case -> why it was not predicted


class Predictor:
    """Averages the class probabilities of every fold (and, if asked, mirrored inputs)."""

    def __init__(self, model: LoadedModel, options: PredictionOptions):
        self.model, self.options = model, options
        self.device = model.device

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, C, rows, columns) inputs -> (B, classes, rows, columns) probabilities and (B, rows, columns) uncertainty."""
        batch = torch.from_numpy(images).to(self.device)
        views = [(batch, False)] + ([(batch.flip(MIRROR_AXIS), True)] if self.options.tta else [])
        total, spread, count = 0.0, 0.0, 0
        for fold in self.model.folds:
            for view, mirrored in views:
                with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                    probabilities, uncertainty = fold.segmenter(view, self.options.n_samples, self.options.seed)
                if mirrored:
                    probabilities = probabilities.flip(MIRROR_AXIS)
                    uncertainty = None if uncertainty is None else uncertainty.flip(MIRROR_AXIS)
                total = total + probabilities.float()
                spread = None if uncertainty is None else spread + uncertainty.float()
                count += 1
        return (total / count).cpu().numpy(), None if spread is None else (spread / count).cpu().numpy()


def output_paths(output: Path, case: InputCase, options: PredictionOptions) -> list[Path]:
    """The files a case's prediction writes; the label map first."""
    paths = [output / f"{case.name}{case.label_ending}"]
    if options.save_probabilities:
        paths.append(output / f"{case.name}.npz")
    if options.overlays:
        paths.append(output / "overlays" / f"{case.name}.png")
    return paths


def prepare_case(case: InputCase, configuration: ConfigurationManager, channel_names: dict[int, str],
                 with_display: bool) -> PreparedCase | str:
    """Read and preprocess one case as the plans say; a user-facing reason when it cannot be."""
    try:
        raw_channels, image_geometry = read_case_channels(case, len(channel_names))
        inputs, geometry = preprocess_image(raw_channels, configuration, channel_names, next(iter(case.files.values())))
    except SDMCError as error:
        return str(error)
    display = None
    if with_display:
        channel = configuration.input_channels[0].source_channel
        display = display_image(raw_channels[channel], channel_names[channel].upper() == "CT")
    return PreparedCase(case, inputs, geometry, image_geometry or DEFAULT_GEOMETRY, display)


def export_case(prepared: PreparedCase, probabilities: np.ndarray, uncertainty: np.ndarray | None,
                output: Path, options: PredictionOptions) -> None:
    """Map a case's network-geometry outputs back to its original geometry and write them."""
    label_path, *extra_paths = output_paths(output, prepared.case, options)
    export_prediction(probabilities, prepared.geometry, label_path, prepared.image_geometry,
                      extra_paths.pop(0) if options.save_probabilities else None, uncertainty,
                      extra_paths.pop(0) if options.overlays else None, prepared.display)


def predict_folder(model: LoadedModel, listing: InputListing, output: Path, options: PredictionOptions,
                   num_processes: int) -> PredictionRun:
    """Predict every listed case whose outputs are not all there yet (all of them with `overwrite`)."""
    make_folder(output)
    pending, skipped = [], []
    for case in listing.cases.values():
        done = all(path.is_file() for path in output_paths(output, case, options))
        (skipped if done and not options.overwrite else pending).append(case)
    if skipped:
        log.info("%d case(s) already predicted in %s (skipped; --overwrite to redo them)", len(skipped), output)
    run = PredictionRun([], [case.name for case in skipped], dict(listing.problems))
    predictor = Predictor(model, options)
    batch_size = model.family.batch_size
    prepare = partial(prepare_case, configuration=model.configuration, channel_names=model.dataset.channel_names,
                      with_display=options.overlays)
    pool = worker_pool(num_processes) if num_processes > 0 else ThreadPool(1)
    with pool, tqdm(total=len(pending), desc="predicting", unit="slice") as progress:
        writes = []
        try:
            for batch in _batches(pool, prepare, pending, batch_size, run.problems):
                probabilities, uncertainty = predictor.probabilities(np.stack([case.inputs for case in batch]))
                for index, prepared in enumerate(batch):
                    case_uncertainty = None if uncertainty is None else uncertainty[index]
                    writes.append(pool.apply_async(export_case, (prepared, probabilities[index], case_uncertainty,
                                                                 output, options)))
                    run.predicted.append(prepared.case.name)
                progress.update(len(batch))
                writes = _wait_for_old_writes(writes, keep=2 * batch_size)
            _wait_for_old_writes(writes, keep=0)
        finally:  # after an error, writes in flight end (removing their temporary files) before the pool
            for write in writes:
                write.wait()
    return run


def _batches(pool, prepare, cases: list[InputCase], batch_size: int,
             problems: dict[str, str]) -> Iterator[list[PreparedCase]]:
    """Prepared cases in batches, read ahead by the pool; cases that cannot be read go to `problems`."""
    batch = []
    for start in range(0, len(cases), CASES_IN_FLIGHT):
        chunk = cases[start:start + CASES_IN_FLIGHT]
        for case, prepared in zip(chunk, pool.imap(prepare, chunk)):
            if isinstance(prepared, str):
                problems[case.name] = prepared
                continue
            batch.append(prepared)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _wait_for_old_writes(writes: list, keep: int) -> list:
    """Block until at most `keep` writes are pending (raising any error of a finished one)."""
    while len(writes) > keep:
        writes.pop(0).get()
    return writes
