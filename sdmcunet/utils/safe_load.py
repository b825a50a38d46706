"""Reading torch files without running code: safetensors, or torch's zip format with weights_only.

`torch.load(weights_only=True)` rebuilds only tensors and plain containers; a file that asks for
anything else (an arbitrary global such as `os.system`) is refused. Files that are not in the zip
format `torch.save` writes are refused before any unpickling starts.
"""

import pickle
import zipfile
from pathlib import Path

import torch

from sdmcunet.utils.errors import SDMCError


def safe_torch_load(path: Path, mmap: bool = False) -> object:
    """`mmap`: map tensors from the file instead of reading them (cheap when only plain values are needed)."""
    if not path.is_file():
        raise SDMCError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        raise SDMCError(f"{path}: corrupt or not a PyTorch file (not the zip format torch.save writes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        offending = next((line.strip() for line in str(error).splitlines() if "unsupported" in line.lower()), None)
        if offending:  # torch names the global (function or class) the file asked for
            raise SDMCError(f"{path}: refused: it holds objects that could run code when loaded ({offending})") from None
        raise SDMCError(f"{path}: corrupt PyTorch file ({str(error).splitlines()[0]})") from None
    except Exception as error:  # a damaged archive fails in many ways inside torch; none is the user's bug
        raise SDMCError(f"{path}: corrupt PyTorch file ({type(error).__name__}: {error})") from None


def load_tensor_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor mapping from a `.safetensors` or `.pth/.pt/.bin` file (state_dict inside ok)."""
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise SDMCError(f"{path}: file not found")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise SDMCError(f"{path}: corrupt safetensors file ({error})") from None
    content = safe_torch_load(path)
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(torch.is_tensor(value) for value in content.values()):
        raise SDMCError(f"{path}: expected a mapping of parameter names to tensors")
    return content
