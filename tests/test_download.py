"""sdmc_download_stroke2021 against a fake portal on 127.0.0.1: joining, resuming, skipping,
integrity checks, and the refusal of malicious or corrupt archives."""

import dataclasses
import hashlib
import io
import logging
import random
import socket
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

from sdmcunet.dataset_conversion import safe_extract as safe_extract_module
from sdmcunet.dataset_conversion.download_stroke2021 import (
    GROUPS, DownloadOptions, download_stroke2021, main, read_checksums,
)
from sdmcunet.dataset_conversion.safe_extract import COMPLETION_MARKER, safe_extract
from sdmcunet.utils.errors import SDMCError

GROUP = "hemorrhagic"
PART_IDS = (39, 40, 41)
_random = random.Random(2021)
TREE = {
    "Training/Hemorrhagic/PNG/10001.png": _random.randbytes(3000),
    "Training/Hemorrhagic/OVERLAY/10001.png": _random.randbytes(2000),
    "Training/Hemorrhagic/DICOM/10001.dcm": bytes(range(256)) * 8,
}
ZEROS_5_MB = bytes(5 * 10**6)


class FakePortal:
    """What the fake portal serves (URL path -> bytes) and what it was asked."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_once: set[str] = set()  # paths whose next response stops halfway
        self.honour_ranges = True

    def publish(self, archive: bytes, part_ids: tuple[int, ...] | range = PART_IDS) -> list[bytes]:
        """Serve `archive` split into one byte range per id, in ascending id order."""
        bounds = [len(archive) * index // len(part_ids) for index in range(len(part_ids) + 1)]
        parts = [archive[start:end] for start, end in zip(bounds, bounds[1:])]
        for part_id, part in zip(sorted(part_ids), parts):
            self.files[part_path(part_id)] = part
        return parts


class _PortalHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        portal: FakePortal = self.server.portal
        range_header = self.headers.get("Range")
        portal.requests.append((self.path, range_header))
        body = portal.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(range_header.removeprefix("bytes=").rstrip("-")) if range_header and portal.honour_ranges else 0
        if start >= len(body) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.path in portal.cut_once:
            portal.cut_once.discard(self.path)
            payload = payload[: len(payload) // 2]
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean


@pytest.fixture
def portal() -> Iterator[FakePortal]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PortalHandler)
    server.portal = FakePortal(f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.portal
    finally:
        server.shutdown()
        server.server_close()  # also joins the request threads
        thread.join()


def part_path(part_id: int) -> str:
    return f"/Document/Download/{part_id}"


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def symlink_zip(outside: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("Training/link")
        link.create_system = 3  # unix, so that the mode bits count
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, str(outside))
    return buffer.getvalue()


def crc_broken_zip() -> bytes:
    """A stored archive whose second member's data no longer matches its CRC."""
    members = {"Training/good.txt": b"intact", "Training/bad.txt": b"original payload"}
    return zip_bytes(members, zipfile.ZIP_STORED).replace(b"original payload", b"tampered payload")


def options_for(portal: FakePortal, **overrides: object) -> DownloadOptions:
    return dataclasses.replace(
        DownloadOptions(base_url=portal.base_url, retries=2, timeout_seconds=5, backoff_seconds=0), **overrides
    )


def extracted_tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*") if path.is_file() and path.name != COMPLETION_MARKER
    }


def test_download_joins_parts_in_id_order_and_extracts_the_original_tree(portal: FakePortal, tmp_path: Path) -> None:
    portal.publish(zip_bytes(TREE))
    download_stroke2021(tmp_path, {GROUP: [41, 39, 40]}, options_for(portal))
    assert extracted_tree(tmp_path / GROUP) == TREE
    assert list((tmp_path / "downloads").iterdir()) == []  # parts and joined zip are gone


def test_keep_archives_keeps_the_joined_zip(portal: FakePortal, tmp_path: Path) -> None:
    archive = zip_bytes(TREE)
    portal.publish(archive)
    download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal, keep_archives=True))
    assert (tmp_path / "downloads" / f"{GROUP}.zip").read_bytes() == archive


def test_cut_transfer_resumes_with_a_range_request(portal: FakePortal, tmp_path: Path) -> None:
    parts = portal.publish(zip_bytes(TREE))
    portal.cut_once.add(part_path(40))
    download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal))
    received_before_cut = len(parts[1]) // 2
    assert portal.requests.count((part_path(40), f"bytes={received_before_cut}-")) == 1
    assert extracted_tree(tmp_path / GROUP) == TREE


def test_oversized_partial_is_refused_by_the_server_and_restarted(portal: FakePortal, tmp_path: Path) -> None:
    parts = portal.publish(zip_bytes(TREE))
    partial = tmp_path / "downloads" / f"{GROUP}-39.bin.partial"
    partial.parent.mkdir()
    partial.write_bytes(b"x" * (len(parts[0]) + 5))
    download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal))
    assert [header for path, header in portal.requests if path == part_path(39)] == [f"bytes={len(parts[0]) + 5}-", None]
    assert extracted_tree(tmp_path / GROUP) == TREE


def test_server_ignoring_the_range_restarts_the_part_from_zero(portal: FakePortal, tmp_path: Path) -> None:
    portal.publish(zip_bytes(TREE))
    portal.honour_ranges = False
    partial = tmp_path / "downloads" / f"{GROUP}-39.bin.partial"
    partial.parent.mkdir()
    partial.write_bytes(b"stale bytes from elsewhere")
    download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal))
    assert extracted_tree(tmp_path / GROUP) == TREE


def test_rerun_skips_completed_work(portal: FakePortal, tmp_path: Path) -> None:
    portal.publish(zip_bytes(TREE))
    download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal))
    portal.requests.clear()
    download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal))
    assert portal.requests == []
    assert extracted_tree(tmp_path / GROUP) == TREE


def test_missing_part_is_a_clear_error_and_a_rerun_fetches_only_what_is_missing(
    portal: FakePortal, tmp_path: Path
) -> None:
    portal.publish(zip_bytes(TREE))
    last_part = portal.files.pop(part_path(41))
    with pytest.raises(SDMCError, match=r"http://127\.0\.0\.1:\d+/Document/Download/41: HTTP 404"):
        download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal))
    portal.files[part_path(41)] = last_part
    portal.requests.clear()
    download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal))
    assert portal.requests == [(part_path(41), None)]
    assert extracted_tree(tmp_path / GROUP) == TREE


def test_unreachable_server_fails_after_the_retries(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago refuses connections
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = DownloadOptions(base_url=f"http://127.0.0.1:{port}", retries=1, timeout_seconds=2, backoff_seconds=0)
    with pytest.raises(SDMCError, match=rf"127\.0\.0\.1:{port}/Document/Download/39: download failed after 2 attempts"):
        download_stroke2021(tmp_path, {GROUP: PART_IDS}, options)


def test_matching_checksums_are_accepted(portal: FakePortal, tmp_path: Path) -> None:
    archive = zip_bytes(TREE)
    parts = portal.publish(archive)
    names = [f"{GROUP}-{part_id}.bin" for part_id in PART_IDS] + [f"{GROUP}.zip"]
    lines = [f"{hashlib.sha256(data).hexdigest()}  {name}" for data, name in zip([*parts, archive], names)]
    checksum_file = tmp_path / "SHA256SUMS"
    checksum_file.write_text("# release checksums\n" + "\n".join(lines) + "\n")
    checksums = read_checksums(checksum_file)
    assert sorted(checksums) == sorted(names)
    download_stroke2021(tmp_path / "out", {GROUP: PART_IDS}, options_for(portal, checksums=checksums))
    assert extracted_tree(tmp_path / "out" / GROUP) == TREE


def test_checksum_mismatch_deletes_the_part(portal: FakePortal, tmp_path: Path) -> None:
    portal.publish(zip_bytes(TREE))
    checksums = {f"{GROUP}-40.bin": "0" * 64}
    with pytest.raises(SDMCError, match=rf"{GROUP}-40\.bin: SHA-256 is [0-9a-f]{{64}}, the checksum file says 0+"):
        download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal, checksums=checksums))
    assert not (tmp_path / "downloads" / f"{GROUP}-40.bin").exists()


def test_corrupt_archive_is_refused_and_leaves_nothing_extracted(portal: FakePortal, tmp_path: Path) -> None:
    portal.publish(crc_broken_zip())
    with pytest.raises(SDMCError, match=rf"{GROUP}\.zip: corrupt zip archive \(Bad CRC-32"):
        download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal))
    assert [path.name for path in tmp_path.iterdir()] == ["downloads"]


def test_foreign_folder_at_the_target_is_refused_before_downloading(portal: FakePortal, tmp_path: Path) -> None:
    portal.publish(zip_bytes(TREE))
    (tmp_path / GROUP).mkdir()
    (tmp_path / GROUP / "notes.txt").write_text("mine")
    with pytest.raises(SDMCError, match=rf"{GROUP}: already exists and was not extracted by this command"):
        download_stroke2021(tmp_path, {GROUP: PART_IDS}, options_for(portal))
    assert portal.requests == []


NO_LIMIT = 10**9
MALICIOUS_ARCHIVES: dict[str, tuple[Callable[[Path], bytes], int, str]] = {
    # kind: (archive builder given a path outside the target, size limit, reason in the error)
    "path traversal": (lambda outside: zip_bytes({"Training/ok.txt": b"ok", "../../evil.txt": b"x"}), NO_LIMIT,
                       "points outside"),
    "backslash traversal": (lambda outside: zip_bytes({"..\\..\\evil.txt": b"x"}), NO_LIMIT, "points outside"),
    "absolute path": (lambda outside: zip_bytes({str(outside): b"x"}), NO_LIMIT, "absolute path"),
    "drive letter": (lambda outside: zip_bytes({"C:/evil.txt": b"x"}), NO_LIMIT, "absolute path"),
    "symbolic link": (symlink_zip, NO_LIMIT, "symbolic link"),
    "declared size": (lambda outside: zip_bytes({"bomb.dcm": ZEROS_5_MB}), 10**6, "declares 5000000 bytes"),
    "compression ratio": (lambda outside: zip_bytes({"bomb.dcm": ZEROS_5_MB}), NO_LIMIT, "more than 200:1"),
}


@pytest.mark.parametrize("kind", MALICIOUS_ARCHIVES)
def test_malicious_archive_is_refused_without_a_trace(kind: str, tmp_path: Path) -> None:
    build, limit, reason = MALICIOUS_ARCHIVES[kind]
    archive = tmp_path / "archive.zip"
    archive.write_bytes(build(tmp_path / "evil.txt"))
    target = tmp_path / "work" / "target"
    target.mkdir(parents=True)
    with pytest.raises(SDMCError, match=f"archive.zip: .*{reason}"):
        safe_extract(archive, target / GROUP, max_total_bytes=limit)
    assert list(target.iterdir()) == []
    assert [path.name for path in tmp_path.rglob("*") if path.is_file()] == ["archive.zip"]


def test_bytes_written_are_counted_even_when_declared_sizes_pass(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(safe_extract_module, "_check_declared_total", lambda *args: None)
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(zip_bytes({"first.dcm": ZEROS_5_MB, "second.dcm": ZEROS_5_MB}))
    with pytest.raises(SDMCError, match="inflates beyond the limit of 6000000 bytes"):
        safe_extract(archive, tmp_path / "target" / GROUP, max_total_bytes=6 * 10**6, max_ratio=10**6)
    assert list((tmp_path / "target").iterdir()) == []


def test_cli_downloads_the_real_part_ids_and_writes_a_log(
    portal: FakePortal, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    archive = zip_bytes(TREE)
    portal.publish(archive, GROUPS[GROUP])
    argv = ["-o", str(tmp_path), "--groups", GROUP, "--base-url", portal.base_url, "--keep-archives"]
    assert main(argv) == 0
    assert extracted_tree(tmp_path / GROUP) == TREE
    assert (tmp_path / "downloads" / f"{GROUP}.zip").read_bytes() == archive
    assert "extracted" in (tmp_path / "download.log").read_text()


def test_cli_reports_a_user_error_in_one_line(
    portal: FakePortal, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["-o", str(tmp_path), "--groups", GROUP, "--base-url", portal.base_url, "--retries", "0"]
    assert main(argv) == 2
    error_output = capsys.readouterr().err
    assert error_output.startswith("error: ") and error_output.count("\n") == 1
    assert f"{portal.base_url}/Document/Download/39: HTTP 404" in error_output
