"""`sdmc_convert_stroke2021`: a TEKNOFEST-2021 release -> raw dataset `Dataset2021_Stroke2021`.

The dataset is built in a hidden `.Dataset..._Name.partial` folder beside the target; each
converted slice leaves a small record there, so an interrupted run resumes where it stopped,
and the folder is renamed into place only when complete. An existing dataset is never
overwritten.
"""

import argparse
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import asdict
from functools import partial
from pathlib import Path

from sdmcunet import __version__, paths
from sdmcunet.dataset_conversion.convert_slice import (
    CT_CHANNELS, FILE_ENDING, PNG_ONLY_CHANNELS, SliceSkipped, convert_slice,
)
from sdmcunet.dataset_conversion.png_window import DegenerateFit, WindowStatistics, fit_png_window
from sdmcunet.dataset_conversion.teknofest_layout import SourceInventory, SourceSlice, scan_release
from sdmcunet.labels import CLASS_ABBREVIATIONS, HEMORRHAGIC, ISCHEMIC, LABELS
from sdmcunet.raw_dataset import (
    DATASET_FILE, DEFAULT_PNG_WINDOW, PNG_WINDOW_KEY, dataset_folder_name, folders_with_id, make_dataset_json,
)
from sdmcunet.utils.cli import add_num_processes_argument, configure_logging, console_entry, non_negative_int
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_json, make_folder, read_json
from sdmcunet.utils.parallel import parallel_map

log = logging.getLogger("sdmcunet.convert")
RECORDS = ".cases"


def convert_release(source_root: Path, dataset_id: int = 2021, raw_root: Path | None = None,
                    name: str = "Stroke2021", num_processes: int = 1) -> Path:
    """Convert the release under `source_root`; returns the dataset folder."""
    raw_root = raw_root or paths.raw_root()
    inventory = scan_release(source_root)
    folder_name = dataset_folder_name(dataset_id, name)
    target = raw_root / folder_name
    fingerprint = source_fingerprint(inventory)
    if _already_converted(raw_root, dataset_id, target, fingerprint):
        log.info("%s already holds this conversion; nothing to do", target)
        return target
    if not inventory.has_dicom:
        log.warning("no DICOM folder under %s: converting the PNG only (1 channel, spacing 1 mm assumed)", source_root)

    work = raw_root / f".{folder_name}.partial"
    _prepare_work_folder(work, source_root, fingerprint)
    file_log = logging.FileHandler(work / "conversion.log")
    logging.getLogger("sdmcunet").addHandler(file_log)
    try:
        records = _convert_all(inventory, work, num_processes)
        _write_dataset_files(work, inventory, records, fingerprint)
    finally:
        logging.getLogger("sdmcunet").removeHandler(file_log)
        file_log.close()
    shutil.rmtree(work / RECORDS)
    (work / "source.json").unlink()
    os.replace(work, target)
    log.info("wrote %s", target)
    return target


def source_fingerprint(inventory: SourceInventory) -> str:
    """Identifies a release by its slices' relative paths and sizes (not by where it lies)."""
    digest = hashlib.sha256(f"sdmcunet-conversion-1 dicom={inventory.has_dicom}".encode())
    for stem in sorted(inventory.slices):
        for modality, path in sorted(inventory.slices[stem].files.items()):
            digest.update(f"{modality}:{path.relative_to(inventory.root)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _already_converted(raw_root: Path, dataset_id: int, target: Path, fingerprint: str) -> bool:
    others = [folder for folder in folders_with_id(raw_root, dataset_id) if folder != target]
    if others:
        raise SDMCError(f"dataset id {dataset_id} is already taken by {others[0]}; choose another id with -d")
    if not target.exists():
        return False
    report = target / "conversion_report.json"
    if report.is_file() and read_json(report).get("source_fingerprint") == fingerprint:
        return True
    raise SDMCError(
        f"{target} already holds a different dataset; it is left untouched: remove it yourself "
        f"or convert into another id (-d) or raw folder (-o)"
    )


def _prepare_work_folder(work: Path, source_root: Path, fingerprint: str) -> None:
    marker = work / "source.json"
    if work.exists():
        if not marker.is_file() or read_json(marker).get("source_fingerprint") != fingerprint:
            raise SDMCError(f"{work} holds an unfinished conversion of another release; remove it to start over")
        log.info("resuming the unfinished conversion in %s", work)
    make_folder(work / RECORDS)
    atomic_write_json(marker, {"source": str(source_root.resolve()), "source_fingerprint": fingerprint})


def _convert_all(inventory: SourceInventory, work: Path, num_processes: int) -> dict[str, dict]:
    records = {path.stem: json.loads(path.read_text()) for path in (work / RECORDS).glob("*.json")}
    pending = [source for stem, source in sorted(inventory.slices.items()) if stem not in records]
    if records:
        log.info("%d slices already converted, %d to go", len(records), len(pending))
    convert = partial(_convert_and_record, with_dicom=inventory.has_dicom, work=work)
    for stem, record in parallel_map(convert, pending, num_processes, "converting slices", "slice", ordered=False):
        records[stem] = record
    return records


def _convert_and_record(source: SourceSlice, with_dicom: bool, work: Path) -> tuple[str, dict]:
    try:
        record = {"converted": asdict(convert_slice(source, with_dicom, work))}
    except SliceSkipped as reason:
        record = {"skipped": {"case": source.stem, "folder": source.class_folder, "reason": str(reason)}}
    atomic_write_json(work / RECORDS / f"{source.stem}.json", record)
    return source.stem, record


def _write_dataset_files(work: Path, inventory: SourceInventory, records: dict[str, dict], fingerprint: str) -> None:
    converted = [record["converted"] for _, record in sorted(records.items()) if "converted" in record]
    skipped = [record["skipped"] for _, record in sorted(records.items()) if "skipped" in record]
    if not converted:
        raise SDMCError(f"{inventory.root}: no slice could be converted; see {work / 'conversion.log'}")
    channels = CT_CHANNELS if inventory.has_dicom else PNG_ONLY_CHANNELS
    fit, refusal = _measure_png_window(converted) if inventory.has_dicom else (None, None)
    measured = {PNG_WINDOW_KEY: fit} if fit else {}
    atomic_write_json(work / DATASET_FILE, make_dataset_json(
        channels, LABELS, len(converted), FILE_ENDING,
        name="Stroke2021", description="TEKNOFEST-2021 stroke CT slices converted by sdmcunet",
        reference="Ministry of Health of Türkiye open data portal, dataset 1", **measured,
    ))
    atomic_write_json(work / "case_info.json", {
        record["case"]: {key: record[key] for key in ("label_class", "patient_id", "study_uid", "spacing")}
        for record in converted
    })
    report = _report(inventory, converted, skipped, fingerprint) | measured
    if refusal:
        report[f"{PNG_WINDOW_KEY}_refused"] = refusal
    atomic_write_json(work / "conversion_report.json", report)
    for entry in skipped:
        log.warning("skipped %s (%s): %s", entry["case"], entry["folder"], entry["reason"])
    log.info("converted %d slices, skipped %d", len(converted), len(skipped) + len(inventory.conflicts))


def _measure_png_window(converted: list[dict]) -> tuple[dict | None, str | None]:
    """The PNG's window fitted over the slices with both DICOM and PNG, as dataset.json records it, or
    None and why not (a warning: a PNG-channel model given DICOM only will assume the default window)."""
    per_slice = [WindowStatistics(**record["png_window_statistics"]) for record in converted
                 if record.get("png_window_statistics")]  # absent from records of an older converter
    try:
        fit = fit_png_window(per_slice)
    except DegenerateFit as reason:
        log.warning("no PNG window measured from the DICOM/PNG pairs: %s; a PNG-channel model given DICOM only "
                    "will assume the brain window %g..%g HU", reason, *DEFAULT_PNG_WINDOW)
        return None, str(reason)
    log.info("the PNGs are the window %.2f..%.2f HU of the DICOMs (RMSE %.2f grey levels over %d pixels of %d slices)",
             fit.low, fit.high, fit.rmse_grey_levels, fit.pixels, fit.slices)
    return asdict(fit), None


def _report(inventory: SourceInventory, converted: list[dict], skipped: list[dict], fingerprint: str) -> dict:
    per_folder = Counter(CLASS_ABBREVIATIONS[record["label_class"]] for record in converted)
    both = sum(1 for record in converted if {ISCHEMIC, HEMORRHAGIC} <= set(record["labels_present"]))
    return {
        "converter": f"sdmcunet {__version__}",
        "source": str(inventory.root.resolve()),
        "source_fingerprint": fingerprint,
        "channels": "CT (HU from DICOM) + PNG" if inventory.has_dicom else "PNG only: no DICOM folder found",
        "n_converted": len(converted),
        "n_converted_per_folder_class": dict(sorted(per_folder.items())),
        "n_with_both_lesion_kinds": both,
        "n_skipped": len(skipped) + len(inventory.conflicts),
        "skipped": inventory.conflicts + skipped,
        "repaired": [{"case": record["case"], "notes": record["notes"]} for record in converted if record["notes"]],
        "ignored_files": inventory.ignored,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sdmc_convert_stroke2021",
        description="Convert an extracted TEKNOFEST-2021 stroke release (English or Turkish folder "
        "names) into an nnU-Net v2 raw dataset with a conversion report.",
    )
    parser.add_argument("-i", dest="source", type=Path, required=True, help="root of the extracted release")
    parser.add_argument("-d", dest="dataset_id", type=non_negative_int, default=2021, help="dataset id (default 2021)")
    parser.add_argument("-o", dest="raw", type=Path, default=None, help="raw data folder (default $SDMC_raw or ./raw_data)")
    parser.add_argument("--name", default="Stroke2021", help="dataset name (default Stroke2021)")
    add_num_processes_argument(parser)
    return parser.parse_args(argv)


@console_entry
def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parse_args(argv)
    target = convert_release(args.source, args.dataset_id, args.raw, args.name, max(1, args.num_processes))
    report = read_json(target / "conversion_report.json")
    print(f"{target}: {report['n_converted']} slices {report['n_converted_per_folder_class']}, "
          f"{report['n_skipped']} skipped; channels: {report['channels']}; details in conversion_report.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
