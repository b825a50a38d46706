"""Atomic file writing: a reader sees the old file or the new one, never half of one."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# mkstemp creates files readable by the owner only; outputs get the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is fsynced and renamed over it.

    The temporary name keeps the target's suffixes (writers such as SimpleITK choose the
    format from them). On any error the temporary file is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name.removesuffix(suffix)}.", suffix=f".part{suffix}", dir=target.parent
    )
    os.close(handle)
    os.chmod(temporary, FILE_MODE)
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)


def atomic_write_json(target: str | os.PathLike, content: Any) -> None:
    text = json.dumps(content, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    atomic_write_bytes(target, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    from sdmcunet.utils.errors import SDMCError

    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except FileNotFoundError:
        raise SDMCError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise SDMCError(f"{path}: not valid JSON ({error})") from None
