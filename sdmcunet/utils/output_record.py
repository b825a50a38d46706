"""Which command, model and options made the outputs of a folder, so that one folder never mixes
the outputs of two models (or two option sets) under a record naming one of them.

`sdmc_predict`, `sdmc_ensemble` and `sdmc_apply_postprocessing` keep a record in their output folder
(`prediction_info.json`, `ensemble_info.json`, `postprocessing_info.json`). It is written before the
first output, so an interrupted run's folder says what made its files, and compared on every later
run: a run made otherwise (another model, checkpoint, fold, option, input, ...) is refused, naming
both, unless it is asked to `--overwrite`; then the folder's previous outputs are deleted first,
so every output left was made as the record says. Options that only add files (probabilities,
overlays) are recorded but not compared. A folder holding outputs without a record (made by
something else, or by sdmcunet before records existed) is refused: sdmcunet deletes only what a
record says it made.

A record is flat JSON: the identity (`made_by`) and the run's details side by side, with
`compared_on_reruns` naming the identity's keys.
"""

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_json, make_folder, read_json
from sdmcunet.utils.listing import listed

log = logging.getLogger("sdmcunet.outputs")
RECORD_FILES = {"sdmc_predict": "prediction_info.json", "sdmc_ensemble": "ensemble_info.json",
                "sdmc_apply_postprocessing": "postprocessing_info.json"}
IDENTITY_KEY = "compared_on_reruns"
# What the commands write into an output folder: label maps, probabilities, overlays/, DICOM SEG and lesion volumes.
OUTPUT_ENDINGS = (".png", ".nii.gz", ".nii", ".npz", ".dcm", "_volumes.json", "volumes.csv")
OUTPUT_SUBFOLDERS = ("overlays",)
SHOWN_VALUE_CHARACTERS = 300


@dataclass(frozen=True)
class OutputRecord:
    command: str  # a key of RECORD_FILES
    made_by: dict[str, Any]  # JSON values: everything that decides the outputs' content

    @property
    def file_name(self) -> str:
        return RECORD_FILES[self.command]


def made_by_of(folder: Path) -> dict[str, Any] | None:
    """The command and identity recorded in `folder` (e.g. an input of an ensemble), None unless it has one record."""
    found = _records_in(folder)
    if len(found) != 1:
        return None
    command, content = next(iter(found.items()))
    return {"command": command, **{key: content.get(key) for key in content.get(IDENTITY_KEY, [])}}


def claim_output_folder(folder: Path, record: OutputRecord, overwrite: bool, **details: Any) -> None:
    """Make `folder` a folder of outputs made as `record` says, before the first of them is written.

    A folder with the same record is kept as it is (its outputs are this run's too). Any other
    folder with outputs is refused, naming what differs, unless `overwrite` is asked for a folder
    that a record says sdmcunet made: its outputs are then deleted. An error naming the folder when
    it cannot be created.
    """
    make_folder(folder)
    records = _records_in(folder)
    if records and not _differences(records, record):
        return
    if records or previous_outputs(folder):
        _refuse_or_clear(folder, records, record, overwrite)
    write_record(folder, record, **details)


@contextmanager
def record_lock(folder: Path, record: OutputRecord) -> Iterator[None]:
    """One process at a time claims `folder` or updates its record: the parts of a split job
    (`sdmc_predict -num_parts`) write into one folder. Where the file system has no locks, goes on."""
    make_folder(folder)
    descriptor = os.open(folder, os.O_RDONLY)  # the folder itself is locked: no lock file is left behind
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as error:
            log.warning("%s: cannot lock the folder (%s); do not run parts of a job into it at once", folder, error)
        yield
    finally:
        os.close(descriptor)


def read_record(folder: Path, record: OutputRecord) -> dict[str, Any]:
    """The record of `folder` as stored ({} when there is none)."""
    path = folder / record.file_name
    content = read_json(path) if path.is_file() else {}
    return content if isinstance(content, dict) else {}


def write_record(folder: Path, record: OutputRecord, **details: Any) -> None:
    """Write the record with the run's `details` (counts, problems, additive options), atomically."""
    atomic_write_json(folder / record.file_name,
                      {"command": record.command, **record.made_by, **details, IDENTITY_KEY: list(record.made_by)})


def previous_outputs(folder: Path) -> list[Path]:
    """The files of `folder` that a command writes as outputs (hidden files, unfinished writes, never count)."""
    candidates = [*folder.iterdir(), *(path for name in OUTPUT_SUBFOLDERS if (folder / name).is_dir()
                                       for path in (folder / name).iterdir())]
    return sorted(path for path in candidates if path.is_file() and not path.name.startswith(".")
                  and path.name.lower().endswith(OUTPUT_ENDINGS))


def _records_in(folder: Path) -> dict[str, dict]:
    """Every command's record in `folder`, by command; a record that is not a JSON object counts as empty."""
    found = {}
    for command, name in RECORD_FILES.items():
        if (folder / name).is_file():
            content = read_json(folder / name)
            found[command] = content if isinstance(content, dict) else {}
    return found


def _differences(records: dict[str, dict], record: OutputRecord) -> list[str]:
    """What differs between a folder's records and `record`, in words; empty when the record is the same."""
    if others := sorted(set(records) - {record.command}):
        return [f"made by {listed(others)}, not by {record.command}"]
    previous = records[record.command]
    current = json.loads(json.dumps(record.made_by))  # as stored: tuples become lists, keys strings
    return [f"{key} was {_shown(previous.get(key))}, now {_shown(value)}"
            for key, value in current.items() if previous.get(key) != value]


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= SHOWN_VALUE_CHARACTERS else text[:SHOWN_VALUE_CHARACTERS] + "..."


def _refuse_or_clear(folder: Path, records: dict[str, dict], record: OutputRecord, overwrite: bool) -> None:
    """Refuse a folder of outputs made otherwise than `record` says, or, with `overwrite` and a record saying
    that sdmcunet made them, delete them."""
    outputs = previous_outputs(folder)
    if not records:
        raise SDMCError(f"{folder}: holds {len(outputs)} label maps, probabilities or overlays but no record of "
                        f"what made them ({listed(RECORD_FILES.values(), separator=' or ')}); choose another output "
                        f"folder, or move them away")
    record_files = listed(RECORD_FILES[command] for command in records)
    differences = "; ".join(_differences(records, record))
    if not overwrite:
        raise SDMCError(f"{folder}: holds outputs of another run (see its {record_files}): {differences}; choose "
                        f"another output folder, or add --overwrite to delete its {len(outputs)} outputs and make "
                        f"them again")
    log.warning("%s: deleting %d outputs of another run (%s)", folder, len(outputs), differences)
    for path in [*outputs, *(folder / RECORD_FILES[command] for command in records)]:
        path.unlink()
