"""The four folders every command reads from and writes to.

Each can be set by an environment variable; without one the folder is relative to the current
working directory, so the commands work with no set-up at all (docs/design.md §1).
"""

import os
from pathlib import Path

_DEFAULTS = {
    "SDMC_raw": "raw_data",
    "SDMC_preprocessed": "preprocessed",
    "SDMC_results": "results",
    "SDMC_weights": "weights",
}


def _folder(variable: str) -> Path:
    return Path(os.environ.get(variable) or _DEFAULTS[variable]).expanduser()


def raw_root() -> Path:
    """Raw datasets in the nnU-Net v2 layout (`Dataset{id}_{Name}/`)."""
    return _folder("SDMC_raw")


def preprocessed_root() -> Path:
    """Fingerprints, plans, splits and preprocessed arrays."""
    return _folder("SDMC_preprocessed")


def results_root() -> Path:
    """Trained models, validation predictions and summaries."""
    return _folder("SDMC_results")


def weights_root() -> Path:
    """Downloaded or converted pretrained weights."""
    return _folder("SDMC_weights")
