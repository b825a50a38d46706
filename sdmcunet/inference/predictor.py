"""Label maps for new slices and volumes from one or more folds of a trained model.

Reading and preprocessing run in worker processes ahead of the network, and writing the
outputs runs behind it, so the network is rarely kept waiting. The network sees slices in
batches whatever case they come from; a volume is read once and written once. Fold (and mirror,
and noise draw) probabilities are averaged in the network geometry, then mapped back to each
slice's original geometry once.
"""

import logging
from dataclasses import dataclass
from functools import partial
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sdmcunet.experiment_planning.plans_manager import ConfigurationManager
from sdmcunet.imageio import DEFAULT_GEOMETRY, ImageGeometry
from sdmcunet.inference.dicom_seg import SEG_SUFFIX
from sdmcunet.inference.export import VolumeOutputs, VolumePrediction, export_prediction, export_volume_prediction
from sdmcunet.inference.input_files import InputCase, InputListing, read_case_channels
from sdmcunet.inference.lesion_volumes import VOLUMES_SUFFIX
from sdmcunet.inference.model_loading import LoadedModel
from sdmcunet.inference.overlays import display_image
from sdmcunet.networks.segmenters import summarise_draws
from sdmcunet.preprocessing.geometry import Geometry
from sdmcunet.preprocessing.preprocessor import preprocess_image
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import make_folder
from sdmcunet.utils.parallel import worker_pool
from sdmcunet.utils.progress import progress_bar

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
    inputs: np.ndarray  # (slices, input channels, rows, columns) float32: one slice for a 2D case
    geometries: list[Geometry]  # per slice, from the original slice to the network's input
    image_geometry: ImageGeometry  # where the original pixels lie: its label map's too
    display: np.ndarray | None  # (slices, H, W) uint8 grey pictures, for overlays


@dataclass
class PredictionRun:
    predicted: list[str]
    skipped: list[str]  # outputs already there
    problems: dict[str, str]  # input file or case -> why it was not predicted


@dataclass
class BatchPrediction:
    """Network-geometry outputs of a batch of slices."""

    probabilities: np.ndarray  # (B, classes, rows, columns), averaged over folds, mirrors and noise draws
    uncertainty: np.ndarray | None  # (B, rows, columns): spread over noise draws
    draws: np.ndarray | None  # (draws, B, classes, rows, columns): each draw averaged over folds and mirrors


class Predictor:
    """Averages the class probabilities of every fold (and, if asked, mirrored inputs)."""

    def __init__(self, model: LoadedModel, options: PredictionOptions):
        self.model, self.options = model, options
        self.device = model.device

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> BatchPrediction:
        """(B, C, rows, columns) inputs -> their probabilities, uncertainty and noise draws."""
        batch = torch.from_numpy(images).to(self.device)
        views = [(batch, False)] + ([(batch.flip(MIRROR_AXIS), True)] if self.options.tta else [])
        keep_draws = self.options.n_samples > 1  # for the spread of lesion volumes over the draws
        total, spread, draws_total, count = 0.0, 0.0, 0.0, 0
        for fold in self.model.folds:
            for view, mirrored in views:
                with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                    draws = fold.segmenter.draws(view, self.options.n_samples, self.options.seed).float()
                if mirrored:
                    draws = draws.flip(MIRROR_AXIS)
                probabilities, uncertainty = summarise_draws(draws)
                total = total + probabilities
                spread = None if uncertainty is None else spread + uncertainty
                draws_total = draws_total + draws if keep_draws else None
                count += 1
        return BatchPrediction((total / count).cpu().numpy(), None if spread is None else (spread / count).cpu().numpy(),
                               (draws_total / count).cpu().numpy() if keep_draws and spread is not None else None)

    def probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, C, rows, columns) inputs -> (B, classes, rows, columns) probabilities and (B, rows, columns) uncertainty."""
        prediction = self.predict(images)
        return prediction.probabilities, prediction.uncertainty


def output_paths(output: Path, case: InputCase, options: PredictionOptions) -> list[Path]:
    """The files a case's prediction writes; the label map first."""
    paths = [output / f"{case.name}{case.label_ending}"]
    if options.save_probabilities:
        paths.append(output / f"{case.name}.npz")
    if options.overlays:
        paths.append(output / "overlays" / f"{case.name}.png")
    if case.is_volume:
        paths.append(output / f"{case.name}{VOLUMES_SUFFIX}")
    if case.series is not None and case.series.has_frame_of_reference:
        paths.append(output / f"{case.name}{SEG_SUFFIX}")
    return paths


def png_windows(configuration: ConfigurationManager) -> dict[int, tuple[float, float]]:
    """The raw channels the plans say to make from Hounsfield units where a case has no file for them."""
    return {channel.source_channel: channel.png_from_hounsfield for channel in configuration.input_channels
            if channel.png_from_hounsfield is not None}


def prepare_case(case: InputCase, configuration: ConfigurationManager, channel_names: dict[int, str],
                 with_display: bool) -> PreparedCase | str:
    """Read and preprocess one case (every slice of a volume) as the plans say; a user-facing reason
    when it cannot be."""
    try:
        raw_channels, image_geometry = read_case_channels(case, channel_names, png_windows(configuration))
        source = case.input_files()[0]
        prepared = [preprocess_image(raw_channels[:, index], configuration, channel_names, source)
                    for index in range(raw_channels.shape[1])]
    except SDMCError as error:
        return str(error)
    display = None
    if with_display:
        channel = configuration.input_channels[0].source_channel
        display = display_image(raw_channels[channel], channel_names[channel].upper() == "CT")
    return PreparedCase(case, np.stack([inputs for inputs, _ in prepared]), [geometry for _, geometry in prepared],
                        image_geometry or DEFAULT_GEOMETRY, display)


def export_case(prepared: PreparedCase, prediction: BatchPrediction, output: Path, options: PredictionOptions,
                labels: dict[str, int], algorithm: str) -> None:
    """Map a case's network-geometry outputs (one row per slice) back to its original geometry and write them."""
    case = prepared.case
    label_path, *extra_paths = output_paths(output, case, options)
    probabilities_path = extra_paths.pop(0) if options.save_probabilities else None
    overlay_path = extra_paths.pop(0) if options.overlays else None
    if not case.is_volume:
        export_prediction(prediction.probabilities[0], prepared.geometries[0], label_path, prepared.image_geometry,
                          probabilities_path, None if prediction.uncertainty is None else prediction.uncertainty[0],
                          overlay_path, None if prepared.display is None else prepared.display[0])
        return
    export_volume_prediction(
        VolumePrediction(prediction.probabilities, prediction.uncertainty, prediction.draws, prepared.geometries,
                         prepared.image_geometry, prepared.display),
        VolumeOutputs(case.name, label_path, probabilities_path, overlay_path, extra_paths[0],
                      extra_paths[1] if len(extra_paths) > 1 else None),
        labels, algorithm, case.series.files if case.series is not None else ())


def predict_folder(model: LoadedModel, listing: InputListing, output: Path, options: PredictionOptions,
                   num_processes: int) -> PredictionRun:
    """Predict every listed case whose outputs are not all there yet (all of them with `overwrite`).

    The slices of every case, a volume's included, go through the network in batches of the plans'
    batch size; a case is written once all its slices are predicted."""
    make_folder(output)
    pending, skipped = [], []
    for case in listing.cases.values():
        done = all(path.is_file() for path in output_paths(output, case, options))
        (skipped if done and not options.overwrite else pending).append(case)
    if skipped:
        log.info("%d case(s) already predicted in %s (skipped; --overwrite to redo them)", len(skipped), output)
    run = PredictionRun([], [case.name for case in skipped], dict(listing.problems))
    predictor = Predictor(model, options)
    prepare = partial(prepare_case, configuration=model.configuration, channel_names=model.dataset.channel_names,
                      with_display=options.overlays)
    export = partial(export_case, output=output, options=options, labels=model.dataset.labels,
                     algorithm=model.trainer_name)
    pool = worker_pool(num_processes) if num_processes > 0 else ThreadPool(1)
    with pool, progress_bar(total=len(pending), desc="predicting", unit="case") as progress:
        writes = []
        try:
            for prepared, prediction in _predicted_cases(predictor, _prepared_cases(pool, prepare, pending, run.problems),
                                                         model.family.batch_size):
                writes.append(pool.apply_async(export, (prepared, prediction)))
                run.predicted.append(prepared.case.name)
                progress.update(1)
                writes = _wait_for_old_writes(writes, keep=2 * model.family.batch_size)
            _wait_for_old_writes(writes, keep=0)
        finally:  # after an error, writes in flight end (removing their temporary files) before the pool
            for write in writes:
                write.wait()
    return run


def _prepared_cases(pool, prepare, cases: list[InputCase], problems: dict[str, str]) -> Iterator[PreparedCase]:
    """Prepared cases, read ahead by the pool; cases that cannot be read go to `problems`."""
    for start in range(0, len(cases), CASES_IN_FLIGHT):
        chunk = cases[start:start + CASES_IN_FLIGHT]
        for case, prepared in zip(chunk, pool.imap(prepare, chunk)):
            if isinstance(prepared, str):
                problems[case.name] = prepared
            else:
                yield prepared


def _predicted_cases(predictor: Predictor, cases: Iterator[PreparedCase],
                     batch_size: int) -> Iterator[tuple[PreparedCase, BatchPrediction]]:
    """Each case with the network's outputs for all its slices, the slices of consecutive cases sharing batches."""
    waiting: list[PreparedCase] = []  # cases whose slices are not all predicted, in order
    slices: list[tuple[int, int]] = []  # (index in `waiting`, slice) not yet through the network
    done: list[list[BatchPrediction]] = []  # per waiting case, the predictions of its slices so far
    for prepared in [*cases, None]:
        if prepared is not None:
            slices += [(len(waiting), index) for index in range(len(prepared.inputs))]
            waiting.append(prepared)
            done.append([])
        while len(slices) >= batch_size or (prepared is None and slices):
            batch, slices = slices[:batch_size], slices[batch_size:]
            prediction = predictor.predict(np.stack([waiting[case].inputs[index] for case, index in batch]))
            for row, (case, _) in enumerate(batch):
                done[case].append(_row(prediction, row))
            while waiting and len(done[0]) == len(waiting[0].inputs):
                yield waiting.pop(0), _stacked(done.pop(0))
                slices = [(case - 1, index) for case, index in slices]


def _row(prediction: BatchPrediction, row: int) -> BatchPrediction:
    return BatchPrediction(prediction.probabilities[row:row + 1],
                           None if prediction.uncertainty is None else prediction.uncertainty[row:row + 1],
                           None if prediction.draws is None else prediction.draws[:, row:row + 1])


def _stacked(rows: list[BatchPrediction]) -> BatchPrediction:
    first = rows[0]
    return BatchPrediction(np.concatenate([row.probabilities for row in rows]),
                           None if first.uncertainty is None else np.concatenate([row.uncertainty for row in rows]),
                           None if first.draws is None else np.concatenate([row.draws for row in rows], axis=1))


def _wait_for_old_writes(writes: list, keep: int) -> list:
    """Block until at most `keep` writes are pending (raising any error of a finished one)."""
    while len(writes) > keep:
        writes.pop(0).get()
    return writes
