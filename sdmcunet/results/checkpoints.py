"""Checkpoints: written atomically, read without unpickling anything but tensors and plain values.

A checkpoint is a dict saved by `torch.save`; it is read with `torch.load(weights_only=True)`,
which refuses any object that could run code. A crash or a full disk while writing leaves the
previous checkpoint intact (temporary file + rename); a failed write is an SDMCError.

Parts of a network that never train (SDMC's mask autoencoder) are not in the checkpoints: they are
saved once per fold, as a diffusers folder beside them, and each checkpoint records the sha256 of
that folder's weights (`frozen_parts`), so that a checkpoint never pairs with other frozen weights.
"""

import shutil
from pathlib import Path

import torch
from torch import nn

from sdmcunet.utils.errors import OutputWriteError, SDMCError
from sdmcunet.utils.files import atomic_output, sha256
from sdmcunet.utils.safe_load import load_tensor_dict, safe_torch_load

FORMAT = "sdmcunet-checkpoint-1"
FROZEN_PARTS = "frozen_parts"  # checkpoint key: frozen part name -> sha256 of its weights file
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # what diffusers' save_pretrained writes


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


def save_frozen_part(folder: Path, model) -> str:
    """`model.save_pretrained` (a diffusers model) into `folder`, unless it holds these weights already;
    returns the sha256 of the weights file."""
    staging = folder.with_name(f".{folder.name}.saving")
    shutil.rmtree(staging, ignore_errors=True)  # left over from a killed run: incomplete
    try:
        model.save_pretrained(staging, safe_serialization=True)
        digest = sha256(staging / WEIGHTS_FILE)
        if (folder / WEIGHTS_FILE).is_file() and sha256(folder / WEIGHTS_FILE) == digest:
            return digest
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except OSError as error:
        raise OutputWriteError(f"{folder}: could not be written ({error.strerror or error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return digest


def network_weights(state: dict, folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's network weights, its frozen parts read back from their folders in `folder`."""
    network = dict(state["network"])
    for name, digest in state.get(FROZEN_PARTS, {}).items():
        weights = folder / name / WEIGHTS_FILE
        if not weights.is_file():
            raise SDMCError(f"{weights}: missing; the checkpoints beside it need the {name} weights saved there")
        if sha256(weights) != digest:
            raise SDMCError(f"{weights}: holds other {name} weights than the checkpoints beside it were trained with "
                            f"(a later training of this fold replaced them); train the fold again")
        network |= prefixed(load_tensor_dict(weights), name)
    return network


def sub_state(state: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """The weights of the sub-module `part` of a state dict, under the sub-module's own names."""
    return {key.removeprefix(f"{part}."): value for key, value in state.items() if key.startswith(f"{part}.")}


def prefixed(state: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """A sub-module's weights under the names they have in the module holding it as `part`."""
    return {f"{part}.{key}": value for key, value in state.items()}


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load `state` into `module` exactly; the error names the keys that do not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(key for key in set(own) & set(state) if own[key].shape != state[key].shape)
    if missing or unexpected or mismatched:
        raise SDMCError(
            f"{source}: weights of another architecture: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in mismatched[:4]]}"
        )
    module.load_state_dict(state)
