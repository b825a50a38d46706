"""Atomic file writing: a reader sees the old file or the new one, never half of one."""

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sdmcunet.utils.errors import OutputWriteError, SDMCError

# mkstemp creates files readable by the owner only; outputs get the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
_CHUNK_BYTES = 1 << 20


def make_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` and its parents unless they exist; an SDMCError naming it when it cannot be
    (a regular file in the way, no permission, a read-only file system)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SDMCError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputWriteError(f"{folder}: cannot create the folder ({error.strerror or error})") from None
    return folder


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is fsynced and renamed over it.

    The temporary name keeps the target's suffixes (writers such as SimpleITK choose the
    format from them). On any error the temporary file is removed and `target` is untouched.
    """
    target = Path(target)
    make_folder(target.parent)
    prefix, suffix = _temporary_affixes(target.name)
    handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
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


# mkstemp's random part, and the longest file name the usual file systems take
_RANDOM_CHARACTERS, _NAME_MAX_BYTES = 8, 255


def _temporary_affixes(name: str) -> tuple[str, str]:
    """Prefix and suffix of `atomic_path`'s temporary files for `name`: hidden, with its suffix (a writer
    may choose the format by it), the name cut short where the whole would exceed the file system's limit."""
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else Path(name).suffix
    stem, suffix = name.removesuffix(suffix), f".part{suffix}"
    room = _NAME_MAX_BYTES - len(f"..{suffix}".encode()) - _RANDOM_CHARACTERS
    return f".{stem.encode()[:room].decode(errors='ignore')}.", suffix


@contextmanager
def atomic_output(target: str | os.PathLike) -> Iterator[Path]:
    """`atomic_path` for outputs: a write that fails (a full disk, a quota, a read-only folder) is an
    SDMCError naming `target`, which keeps its previous content.

    torch reports a failed write as a RuntimeError that hides its reason (SimpleITK too, when it
    reports one at all), so the free space of the disk is given as well.
    """
    try:
        with atomic_path(target) as temporary:
            yield temporary
    except (OSError, RuntimeError) as error:
        raise OutputWriteError(f"{target}: could not be written ({_failure_reason(error)}; "
                               f"{_disk_state(Path(target).parent)}); the previous file, if any, is intact") from None


def _failure_reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__  # ITK's message ends with the reason


def _disk_state(folder: Path) -> str:
    """What the disk of `folder` says about a failed write (torch and ITK hide the reason itself)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return "its disk could not be inspected"
    if stats.f_flag & os.ST_RDONLY:
        return "its file system is read-only"
    return f"{stats.f_bavail * stats.f_frsize / 2**30:.2f} GB free on its disk"


def remove_unfinished_writes(folder: Path, pattern: str) -> None:
    """Delete what `atomic_path` left in `folder`, for files named by the glob `pattern`, when its
    process was killed mid-write. Only for folders that one process writes at a time."""
    prefix, suffix = _temporary_affixes(pattern)
    for leftover in folder.glob(f"{prefix}*{suffix}"):
        leftover.unlink(missing_ok=True)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_output(target) as temporary:
        temporary.write_bytes(data)


def atomic_write_json(target: str | os.PathLike, content: Any) -> None:
    text = json.dumps(content, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    atomic_write_bytes(target, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except FileNotFoundError:
        raise SDMCError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise SDMCError(f"{path}: not valid JSON ({error})") from None


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, read in chunks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
