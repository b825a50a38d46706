"""Extract a zip archive without trusting it.

Every member must be a regular file or folder whose name stays inside the destination (no
`..`, no absolute path, no drive letter); symbolic links are refused outright, since we never
create links none can point outside. Against zip bombs the declared sizes are checked before
anything is written, and the bytes actually written are counted while streaming, because a
header may lie. The CRC of every member is checked by `zipfile` as it is read.

Extraction goes into a hidden staging folder beside the destination, which is renamed into
place only when every member is written; a refused or failed archive leaves nothing behind.
"""

import re
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from sdmcunet.utils.errors import SDMCError

# Deflate reaches about 1000:1 on constant data, real CT images stay far below 20:1.
MAX_COMPRESSION_RATIO = 200
# Small members are harmless whatever their ratio (a blank image compresses a thousandfold).
RATIO_EXEMPT_BYTES = 1 << 20
# Written last into a finished extraction: tells a re-run it is complete and ours.
COMPLETION_MARKER = ".sdmc_extracted"
_CHUNK_BYTES = 1 << 20
_UTF8_NAME_FLAG = 0x800
_ENCRYPTED_FLAG = 0x1
_DRIVE_LETTER = re.compile(r"[A-Za-z]:")


class _WriteBudget:
    """Counts the bytes actually written, since a member's declared size may lie."""

    def __init__(self, archive: Path, limit_bytes: int) -> None:
        self.archive = archive
        self.limit_bytes = limit_bytes
        self.written_bytes = 0

    def spend(self, count: int) -> None:
        self.written_bytes += count
        if self.written_bytes > self.limit_bytes:
            raise SDMCError(
                f"{self.archive}: inflates beyond the limit of {self.limit_bytes} bytes; "
                "refusing a possible zip bomb"
            )


def is_extracted(destination: Path) -> bool:
    """Whether `destination` is a finished extraction made by `safe_extract`."""
    return (destination / COMPLETION_MARKER).is_file()


def ensure_free_destination(destination: Path) -> None:
    """Raise SDMCError unless `destination` is absent or an empty folder (which is removed)."""
    if not destination.exists():
        return
    if destination.is_dir() and not any(destination.iterdir()):
        destination.rmdir()
        return
    raise SDMCError(
        f"{destination}: already exists and was not extracted by this command; "
        "move it away or choose another output folder"
    )


def safe_extract(
    archive: Path, destination: Path, max_total_bytes: int, max_ratio: float = MAX_COMPRESSION_RATIO
) -> int:
    """Extract `archive` into the new folder `destination`; return the number of bytes written.

    Raises SDMCError, leaving no trace of `destination`, when the archive is corrupt, holds
    a dangerous member, inflates beyond `max_total_bytes` or has a member compressed more
    than `max_ratio` to one.
    """
    ensure_free_destination(destination)
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = _vetted_members(archive, zip_file.infolist(), max_total_bytes, max_ratio)
            budget = _WriteBudget(archive, max_total_bytes)
            _extract_into_place(zip_file, members, destination, budget)
            return budget.written_bytes
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise SDMCError(f"{archive}: corrupt zip archive ({error}); delete it and download again") from None
    except NotImplementedError as error:
        raise SDMCError(f"{archive}: {error}; extract it with another tool such as 7-Zip") from None
    except OSError as error:
        raise SDMCError(f"{destination}: cannot extract {archive} ({error.strerror or error})") from None


def _vetted_members(
    archive: Path, infos: list[zipfile.ZipInfo], max_total_bytes: int, max_ratio: float
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Each member with its path below the destination, once every check has passed."""
    _check_declared_total(archive, infos, max_total_bytes)
    members = []
    for info in infos:
        members.append((info, _safe_relative_path(archive, info)))
        _check_member_kind(archive, info)
        _check_compression_ratio(archive, info, max_ratio)
    return members


def _member_name(info: zipfile.ZipInfo) -> str:
    # Many tools store UTF-8 names without setting the UTF-8 flag, and zipfile then decodes
    # them as cp437; undo that so Turkish folder names (e.g. "İnme Yok") survive.
    if info.flag_bits & _UTF8_NAME_FLAG:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def _safe_relative_path(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's path below the destination; SDMCError if it could leave it."""
    # Zips made on Windows may separate folders with backslashes.
    name = _member_name(info).replace("\\", "/")
    if name.startswith("/") or _DRIVE_LETTER.match(name):
        raise SDMCError(f"{archive}: member {name!r} has an absolute path; refusing the archive")
    components = [component for component in name.split("/") if component not in ("", ".")]
    if ".." in components:
        raise SDMCError(f"{archive}: member {name!r} points outside the target folder; refusing the archive")
    if not components:
        raise SDMCError(f"{archive}: member {name!r} has no usable name; refusing the archive")
    return PurePosixPath(*components)


def _check_member_kind(archive: Path, info: zipfile.ZipInfo) -> None:
    unix_file_type = (info.external_attr >> 16) & 0o170000
    if unix_file_type == 0o120000:
        raise SDMCError(f"{archive}: member {info.filename!r} is a symbolic link; refusing the archive")
    if info.flag_bits & _ENCRYPTED_FLAG:
        raise SDMCError(f"{archive}: member {info.filename!r} is encrypted; refusing the archive")


def _check_compression_ratio(archive: Path, info: zipfile.ZipInfo, max_ratio: float) -> None:
    if info.file_size > RATIO_EXEMPT_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
        raise SDMCError(
            f"{archive}: member {info.filename!r} inflates {info.compress_size} bytes to "
            f"{info.file_size} (more than {max_ratio:g}:1); refusing a possible zip bomb"
        )


def _check_declared_total(archive: Path, infos: list[zipfile.ZipInfo], max_total_bytes: int) -> None:
    declared_bytes = sum(info.file_size for info in infos)
    if declared_bytes > max_total_bytes:
        raise SDMCError(
            f"{archive}: declares {declared_bytes} bytes of content, more than the limit of "
            f"{max_total_bytes}; refusing a possible zip bomb (raise the limit if it is genuine)"
        )


def _extract_into_place(
    zip_file: zipfile.ZipFile,
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    destination: Path,
    budget: _WriteBudget,
) -> None:
    staging = destination.with_name(f".{destination.name}.extracting")
    # A staging folder can only be left over from an interrupted run: it is incomplete.
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for info, relative_path in members:
            _extract_member(zip_file, info, staging / relative_path, budget)
        (staging / COMPLETION_MARKER).write_text(f"{zip_file.filename}\n", encoding="utf-8")
        staging.rename(destination)
    finally:
        # After the rename there is nothing left to remove; after a failure, the partial tree.
        shutil.rmtree(staging, ignore_errors=True)


def _extract_member(zip_file: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _WriteBudget) -> None:
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # "x": a duplicate member name fails instead of silently overwriting its twin.
    with zip_file.open(info) as source, open(target, "xb") as sink:
        while chunk := source.read(_CHUNK_BYTES):
            budget.spend(len(chunk))
            sink.write(chunk)
