"""A fold's final validation: predict every validation case, write it with the predictor's exporter
(mapped back to the original geometry, lying where its reference lies), score, write summary.json."""

import logging
from pathlib import Path

import torch

from sdmcunet.evaluation.metrics import summarise_cases, write_summary
from sdmcunet.imageio import DEFAULT_GEOMETRY, read_label_slice_with_geometry
from sdmcunet.inference.export import export_prediction
from sdmcunet.preprocessing.geometry import Geometry
from sdmcunet.preprocessing.preprocessed_cases import PreprocessedCases
from sdmcunet.raw_dataset import load_dataset_json
from sdmcunet.results.layout import SUMMARY_FILE, references_folder, validation_folder
from sdmcunet.utils.files import make_folder

log = logging.getLogger("sdmcunet.validation")


@torch.no_grad()
def validate_fold(trainer, save_probabilities: bool = False, batch_size: int = 8) -> Path:
    """Predict the fold's validation cases (`trainer.validation_case_ids`) with the trainer's current weights
    (`trainer.validation_probabilities`); returns the path of summary.json."""
    _, val_cases = trainer.split()
    cases = PreprocessedCases(trainer.preprocessed_folder / trainer.configuration.data_identifier, val_cases)
    chosen = trainer.validation_case_ids(cases)
    file_ending = load_dataset_json(trainer.preprocessed_folder).file_ending
    output = make_folder(validation_folder(trainer.output_folder))
    trainer.network.eval()
    scored = {}
    for start in range(0, len(chosen), batch_size):
        names = chosen[start:start + batch_size]
        for name, probabilities in zip(names, trainer.validation_probabilities(cases, names)):
            reference_path = references_folder(trainer.preprocessed_folder) / f"{name}{file_ending}"
            reference, reference_geometry = read_label_slice_with_geometry(reference_path)
            reference_geometry = reference_geometry or DEFAULT_GEOMETRY
            label_map = export_prediction(
                probabilities, Geometry.from_json(cases.properties[name]["geometry"]), output / f"{name}{file_ending}",
                reference_geometry, output / f"{name}.npz" if save_probabilities else None)
            scored[name] = (label_map, reference, reference_geometry.spacing)
    summary = summarise_cases(scored) if scored else {"note": "no validation case to score"}
    if description := trainer.validation_description():
        summary["what"] = description
    summary_path = output / SUMMARY_FILE
    write_summary(summary_path, summary)
    log.info("validation of fold %s: %s", trainer.fold, summary_path)
    return summary_path
