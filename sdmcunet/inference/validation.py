"""A fold's final validation: predict every validation case, map back, score, write summary.json."""

import logging
from pathlib import Path

import numpy as np
import torch

from sdmcunet.evaluation.metrics import summarise_cases, write_summary
from sdmcunet.imageio import DEFAULT_GEOMETRY, read_label_slice_with_geometry, write_image
from sdmcunet.imageio.probabilities import save_probabilities as write_probabilities
from sdmcunet.preprocessing.geometry import Geometry, probabilities_to_original
from sdmcunet.raw_dataset import load_dataset_json
from sdmcunet.training.data_loading import PreprocessedCases

log = logging.getLogger("sdmcunet.validation")


@torch.no_grad()
def validate_fold(trainer, save_probabilities: bool = False, batch_size: int = 8) -> Path:
    """Predict the fold's validation cases with `trainer`'s current weights; returns summary.json."""
    _, val_cases = trainer.split()
    folder = trainer.preprocessed_folder / trainer.config["data_identifier"]
    cases = PreprocessedCases(folder, val_cases)
    file_ending = load_dataset_json(trainer.preprocessed_folder).file_ending
    output = trainer.output_folder / "validation"
    output.mkdir(parents=True, exist_ok=True)
    trainer.network.eval()
    scored = {}
    for start in range(0, len(val_cases), batch_size):
        names = val_cases[start:start + batch_size]
        images = torch.from_numpy(np.stack([cases.image(name) for name in names]).astype(np.float32)).to(trainer.device)
        with torch.autocast(trainer.device.type, enabled=trainer.device.type == "cuda"):
            probabilities = trainer.predict_probabilities(images).float().cpu().numpy()
        for name, case_probabilities in zip(names, probabilities):
            network_geometry = Geometry.from_json(cases.properties[name]["geometry"])
            original = probabilities_to_original(case_probabilities, network_geometry)
            label_map = original.argmax(0).astype(np.uint8)
            reference_path = trainer.preprocessed_folder / "gt_segmentations" / f"{name}{file_ending}"
            reference, reference_geometry = read_label_slice_with_geometry(reference_path)
            reference_geometry = reference_geometry or DEFAULT_GEOMETRY
            write_image(label_map, output / f"{name}{file_ending}", reference_geometry)  # lies where its reference lies
            if save_probabilities:
                write_probabilities(output / f"{name}.npz", original)
            scored[name] = (label_map, reference, reference_geometry.spacing)
    summary_path = output / "summary.json"
    write_summary(summary_path, summarise_cases(scored))
    log.info("validation of fold %s: %s", trainer.fold, summary_path)
    return summary_path
