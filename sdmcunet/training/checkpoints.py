"""Checkpoints: written atomically, read without unpickling anything but tensors and plain values.

A checkpoint is a dict saved by `torch.save`; it is read with `torch.load(weights_only=True)`,
which refuses any object that could run code. A crash or a full disk while writing leaves the
previous checkpoint intact (temporary file + rename); a failed write is an SDMCError.
"""

from pathlib import Path

import torch

from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_output
from sdmcunet.utils.safe_load import safe_torch_load

FORMAT = "sdmcunet-checkpoint-1"


def save_checkpoint(path: Path, content: dict) -> None:
    with atomic_output(path) as temporary:
        torch.save({"format": FORMAT, **content}, temporary)


def load_checkpoint(path: Path, trainer_name: str | None = None, mmap: bool = False) -> dict:
    """Read an sdmcunet checkpoint; refuse corrupt, foreign or code-carrying files.

    `mmap`: tensors stay in the file until used, so reading the history of a large model is cheap.
    """
    if not path.is_file():
        raise SDMCError(f"{path}: checkpoint not found")
    content = safe_torch_load(path, mmap=mmap)
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise SDMCError(f"{path}: not an sdmcunet checkpoint (no '{FORMAT}' format mark)")
    if trainer_name is not None and content.get("trainer") != trainer_name:
        raise SDMCError(f"{path}: written by {content.get('trainer')}, not by {trainer_name}")
    return content
