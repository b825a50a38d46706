"""Class probabilities saved beside a label map: `{case}.npz` holding `probabilities`, float16,
(classes, rows, columns) in the label map's geometry, and, for stochastic models, `uncertainty`
(rows, columns). Written by `sdmc_predict --save_probabilities`, `sdmc_train --npz` and
`sdmc_ensemble --save_probabilities`; read by `sdmc_ensemble`."""

import zipfile
from pathlib import Path

import numpy as np

from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_output

PROBABILITIES_KEY = "probabilities"
UNCERTAINTY_KEY = "uncertainty"


def save_probabilities(path: Path, probabilities: np.ndarray, uncertainty: np.ndarray | None = None) -> None:
    arrays = {PROBABILITIES_KEY: probabilities.astype(np.float16)}
    if uncertainty is not None:
        arrays[UNCERTAINTY_KEY] = uncertainty.astype(np.float16)
    with atomic_output(path) as temporary:
        np.savez_compressed(temporary, **arrays)


def load_probabilities(path: Path) -> np.ndarray:
    try:
        with np.load(path) as content:
            probabilities = content[PROBABILITIES_KEY]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise SDMCError(f"{path}: cannot be read as .npz ({error})") from None
    except KeyError:
        raise SDMCError(f"{path}: no '{PROBABILITIES_KEY}' array") from None
    if probabilities.ndim != 3:
        raise SDMCError(f"{path}: expected probabilities of shape (classes, rows, columns), got {probabilities.shape}")
    return probabilities
