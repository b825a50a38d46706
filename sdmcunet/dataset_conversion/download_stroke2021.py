"""`sdmc_download_stroke2021 -o DIR`: fetch the TEKNOFEST-2021 stroke release and unpack it.

The Ministry of Health of Türkiye publishes each group as zip parts at
`<base>/Document/Download/<id>`; joined byte by byte in ascending id order they form one zip.
Parts download into `DIR/downloads/<group>-<id>.bin` (in progress: `.bin.partial`, resumed
with an HTTP Range request), are joined into `DIR/downloads/<group>.zip` and extracted
safely into `DIR/<group>/`. Every finished step is skipped when the command runs again.
"""

import argparse
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from tqdm import tqdm

from sdmcunet.dataset_conversion.safe_extract import ensure_free_destination, is_extracted, safe_extract
from sdmcunet.utils.cli import configure_logging, console_entry, non_negative_int, positive_float
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_output, make_folder, sha256
from sdmcunet.utils.progress import progress_bar

BASE_URL = "https://acikveri.saglik.gov.tr"
GROUPS: dict[str, range] = {
    "hemorrhagic": range(39, 45),
    "ischemic": range(33, 39),
    "non_stroke_png": range(26, 33),
    "non_stroke_dicom": range(14, 24),
}
DOWNLOADS_FOLDER = "downloads"
LOG_FILE = "download.log"
_CHUNK_BYTES = 1 << 20
_MAX_BACKOFF_SECONDS = 60.0
# Statuses that say "not now" rather than "not there".
_TRANSIENT_STATUSES = {408, 425, 429}
_CONTENT_RANGE = re.compile(r"bytes (?:(?P<start>\d+)-\d+|\*)/(?P<total>\d+|\*)")
_CHECKSUM_LINE = re.compile(r"(?P<digest>[0-9a-fA-F]{64}) [ *](?P<name>.+)")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadOptions:
    """Where the portal is, how patient to be with it, and what to check."""

    base_url: str = BASE_URL
    # Consecutive failed attempts allowed per part; an attempt that brought bytes resets the count.
    retries: int = 5
    timeout_seconds: float = 60.0
    backoff_seconds: float = 2.0
    checksums: Mapping[str, str] = field(default_factory=dict)
    max_extracted_bytes: int = 40 * 10**9
    keep_archives: bool = False


class _ProgressBar(tqdm):
    # tqdm's monitor thread can outlive the bar, and a bar updated once per chunk has no use for it.
    monitor_interval = 0


class _TransientError(Exception):
    """A failure that a later attempt may not meet (network hiccup, cut transfer, busy server)."""


def part_url(base_url: str, part_id: int) -> str:
    """Where the portal serves part `part_id`."""
    return f"{base_url.rstrip('/')}/Document/Download/{part_id}"


def download_stroke2021(output_dir: Path, groups: Mapping[str, Sequence[int]], options: DownloadOptions) -> None:
    """Download, join and extract every group of `groups` (name -> part ids) into `output_dir`."""
    for group, part_ids in groups.items():
        fetch_group(output_dir, group, part_ids, options)


def fetch_group(output_dir: Path, group: str, part_ids: Sequence[int], options: DownloadOptions) -> Path:
    """Make `output_dir/group` hold the extracted group, doing only the steps not done yet."""
    destination = output_dir / group
    if is_extracted(destination):
        logger.info("%s: already extracted, skipping", destination)
        return destination
    # Fail before hours of downloading, not after.
    ensure_free_destination(destination)
    archive = output_dir / DOWNLOADS_FOLDER / f"{group}.zip"
    if not archive.exists():
        parts = {part_id: archive.with_name(f"{group}-{part_id}.bin") for part_id in sorted(part_ids)}
        for part_id, part in parts.items():
            _fetch_part(part_url(options.base_url, part_id), part, options)
        _build_archive(list(parts.values()), archive, options.checksums)
    logger.info("%s: extracting into %s", archive, destination)
    written_bytes = safe_extract(archive, destination, options.max_extracted_bytes)
    logger.info("%s: extracted %d bytes", destination, written_bytes)
    if not options.keep_archives:
        archive.unlink()
    return destination


def download_part(url: str, destination: Path, options: DownloadOptions) -> None:
    """Download `url` to `destination` unless it is there, resuming `<destination>.partial`."""
    if destination.exists():
        logger.info("%s: already downloaded, skipping", destination)
        return
    partial = destination.with_name(destination.name + ".partial")
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        _transfer_with_retries(url, partial, options)
        os.replace(partial, destination)
    except OSError as error:
        raise SDMCError(f"{partial}: cannot write the download ({error.strerror or error})") from None
    logger.info("%s: downloaded %d bytes", destination, destination.stat().st_size)


def concatenate_parts(parts: Sequence[Path], archive: Path) -> None:
    """Join `parts` byte by byte, in the given order, into `archive`; it appears only when complete."""
    with atomic_output(archive) as temporary, open(temporary, "wb") as sink:
        for part in parts:
            with open(part, "rb") as source:
                shutil.copyfileobj(source, sink, _CHUNK_BYTES)


def read_checksums(path: Path) -> dict[str, str]:
    """File name -> SHA-256 from a `sha256sum`-style file (`<hex digest>  <file name>` lines)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SDMCError(f"{path}: cannot read the checksum file ({error.strerror or error})") from None
    checksums = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _CHECKSUM_LINE.fullmatch(line.strip())
        if match is None:
            raise SDMCError(f"{path}, line {number}: expected '<sha256>  <file name>', found {line!r}")
        checksums[Path(match["name"]).name] = match["digest"].lower()
    return checksums


def verify_checksum(path: Path, checksums: Mapping[str, str]) -> None:
    """Raise SDMCError if `checksums` lists `path`'s name with another SHA-256."""
    expected = checksums.get(path.name)
    if expected is None:
        return
    digest = sha256(path)
    if digest != expected:
        raise SDMCError(f"{path}: SHA-256 is {digest}, the checksum file says {expected}")


def _fetch_part(url: str, part: Path, options: DownloadOptions) -> None:
    download_part(url, part, options)
    _verify_or_discard(part, options.checksums, discard=[part])


def _build_archive(parts: Sequence[Path], archive: Path, checksums: Mapping[str, str]) -> None:
    try:
        concatenate_parts(parts, archive)
    except OSError as error:
        raise SDMCError(f"{archive}: cannot write the joined archive ({error.strerror or error})") from None
    # Parts that join into a wrong archive are wrong themselves: fetch them all again.
    _verify_or_discard(archive, checksums, discard=[archive, *parts])
    # The archive replaces its parts; keeping both would double the disk space needed.
    for part in parts:
        part.unlink()


def _verify_or_discard(path: Path, checksums: Mapping[str, str], discard: Sequence[Path]) -> None:
    try:
        verify_checksum(path, checksums)
    except SDMCError as error:
        for stale in discard:
            stale.unlink(missing_ok=True)
        raise SDMCError(f"{error}; deleted, run the command again to download it anew") from None


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _transfer_with_retries(url: str, partial: Path, options: DownloadOptions) -> None:
    failures = 0
    while True:
        size_before = _size(partial)
        try:
            _attempt_transfer(url, partial, options.timeout_seconds)
            return
        except _TransientError as problem:
            failures = 0 if _size(partial) > size_before else failures + 1
            if failures > options.retries:
                raise SDMCError(
                    f"{url}: download failed after {failures} attempts without progress ({problem}); "
                    "run the command again to resume"
                ) from None
            delay = min(options.backoff_seconds * 2**failures, _MAX_BACKOFF_SECONDS)
            logger.warning("%s: %s; retrying in %.0f s", url, problem, delay)
            time.sleep(delay)


def _attempt_transfer(url: str, partial: Path, timeout_seconds: float) -> None:
    """Request what `partial` still lacks and append it; _TransientError if still incomplete."""
    offset = _size(partial)
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            expected_size = _prepare_partial(response, partial, offset)
            _append_body(response, partial, expected_size)
    except urllib.error.HTTPError as error:
        expected_size = _handle_http_error(error, url, partial, offset)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
        raise _TransientError(str(error)) from error
    _check_complete(partial, expected_size)


def _prepare_partial(response: http.client.HTTPResponse, partial: Path, offset: int) -> int | None:
    """Make `partial` ready for the body of `response`; return the full size announced."""
    if response.status == 206:
        start, total = _parse_content_range(response.headers.get("Content-Range"))
        if start != offset:
            partial.unlink()
            raise _TransientError(f"server resumed at byte {start} instead of {offset}; restarting")
        return total
    # A 200 carries the whole file, whether or not a range was asked for.
    partial.write_bytes(b"")
    length = response.headers.get("Content-Length")
    return int(length) if length else None


def _handle_http_error(error: urllib.error.HTTPError, url: str, partial: Path, offset: int) -> int:
    """Handle an HTTP error status: the size of a finished `partial`, or raise."""
    if error.code == 416 and offset:
        _, total = _parse_content_range(error.headers.get("Content-Range"))
        if total == offset:
            return total
        partial.unlink()
        raise _TransientError(f"server refused to resume at byte {offset} (file size {total}); restarting")
    if error.code >= 500 or error.code in _TRANSIENT_STATUSES:
        raise _TransientError(f"HTTP {error.code} {error.reason}")
    raise SDMCError(f"{url}: HTTP {error.code} {error.reason}; check --base-url and the part ids")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, full size) from a Content-Range header; None where it gives none."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None, None
    start, total = match["start"], match["total"]
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _append_body(response: http.client.HTTPResponse, partial: Path, expected_size: int | None) -> None:
    with open(partial, "ab") as sink, progress_bar(
        bar_class=_ProgressBar, total=expected_size, initial=sink.tell(), desc=partial.name, unit="B",
        unit_scale=True, unit_divisor=1024,
    ) as progress:
        while chunk := response.read(_CHUNK_BYTES):
            sink.write(chunk)
            progress.update(len(chunk))


def _check_complete(partial: Path, expected_size: int | None) -> None:
    received = _size(partial)
    if expected_size is None:
        logger.warning("%s: the server gave no size; relying on checksums and zip CRCs", partial)
    elif received < expected_size:
        raise _TransientError(f"transfer stopped at byte {received} of {expected_size}")
    elif received > expected_size:
        partial.unlink()
        raise _TransientError(f"received {received} bytes but {expected_size} were announced; restarting")


def http_url(value: str) -> str:
    if urllib.parse.urlsplit(value).scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http(s) URL")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdmc_download_stroke2021",
        description="Download the TEKNOFEST-2021 stroke release, check it and extract it safely.",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="folder to download and extract into")
    parser.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS), metavar="GROUP",
                        help=f"groups to fetch, of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--base-url", type=http_url, default=BASE_URL, metavar="URL", help=f"portal address (default: {BASE_URL})")
    parser.add_argument("--retries", type=non_negative_int, default=DownloadOptions.retries, metavar="N",
                        help="retries of a part after attempts in a row that brought no data (default: %(default)s)")
    parser.add_argument("--timeout", type=positive_float, default=DownloadOptions.timeout_seconds, metavar="SECONDS",
                        help="seconds without data before an attempt fails (default: %(default)s)")
    parser.add_argument("--checksums", type=Path, metavar="FILE",
                        help="sha256sum-style file checked against the parts (<group>-<id>.bin) "
                        "and joined archives (<group>.zip) it names")
    parser.add_argument("--max-extracted-gb", type=positive_float, default=40.0, metavar="GB",
                        help="refuse an archive inflating beyond this many GB (default: %(default)s)")
    parser.add_argument("--keep-archives", action="store_true", help="keep the joined zip after extraction")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    return parser


@contextmanager
def _log_to_file(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@console_entry
def main(argv: list[str] | None = None) -> int:
    """Command line: download, check and extract the selected groups into `-o DIR`."""
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    output_dir = make_folder(args.output)
    with _log_to_file(output_dir / LOG_FILE):
        options = DownloadOptions(
            base_url=args.base_url,
            retries=args.retries,
            timeout_seconds=args.timeout,
            checksums=read_checksums(args.checksums) if args.checksums else {},
            max_extracted_bytes=int(args.max_extracted_gb * 10**9),
            keep_archives=args.keep_archives,
        )
        download_stroke2021(output_dir, {group: GROUPS[group] for group in args.groups}, options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
