"""`sdmc_install_model`: install a model archive made by `sdmc_export_model` into `$SDMC_results`.

    sdmc_install_model sdmc_stroke2021.zip

The archive is extracted by `safe_extract` (no path leaving the folder, no links, no zip bombs) into
a hidden folder beside the model folder, checked against its manifest, and renamed into place: an
interrupted or refused installation leaves no model folder, complete or not, and an existing model
folder is never changed.
"""

import argparse
import contextlib
import json
import shutil
import zipfile
import zlib
from pathlib import Path

from sdmcunet import paths
from sdmcunet.dataset_conversion.safe_extract import COMPLETION_MARKER, safe_extract
from sdmcunet.model_sharing.manifest import MANIFEST_FILE, Manifest, check_inside_model
from sdmcunet.raw_dataset import folders_with_id
from sdmcunet.results import layout
from sdmcunet.results.trained_model import TrainedModel
from sdmcunet.utils.cli import console_entry, positive_float
from sdmcunet.utils.errors import OutputWriteError, SDMCError
from sdmcunet.utils.files import make_folder, sha256

DEFAULT_MAX_EXTRACTED_GB = 100.0  # five folds of SDMC-Seg with their checkpoints stay far below
_MANIFEST_MAX_BYTES = 1 << 24


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdmc_install_model", description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="a zip archive made by sdmc_export_model")
    parser.add_argument("--max-extracted-gb", type=positive_float, default=DEFAULT_MAX_EXTRACTED_GB, metavar="GB",
                        help=f"refuse an archive inflating beyond this (default {DEFAULT_MAX_EXTRACTED_GB:g} GB)")
    return parser.parse_args(argv)


def read_manifest(archive: Path) -> Manifest:
    """The archive's manifest, checked, read before anything is written."""
    if not archive.is_file():
        raise SDMCError(f"{archive}: no such file")
    try:
        with zipfile.ZipFile(archive) as zip_file:
            try:
                info = zip_file.getinfo(MANIFEST_FILE)
            except KeyError:
                raise SDMCError(f"{archive}: not an sdmcunet model archive (no {MANIFEST_FILE}); make one with "
                                f"sdmc_export_model") from None
            if info.file_size > _MANIFEST_MAX_BYTES:
                raise SDMCError(f"{archive}: its {MANIFEST_FILE} declares {info.file_size} bytes, far more than a "
                                f"manifest holds; refusing the archive")
            text = zip_file.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise SDMCError(f"{archive}: not a readable zip archive ({error})") from None
    except OSError as error:
        raise SDMCError(f"{archive}: cannot be read ({error.strerror or error})") from None
    try:
        content = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SDMCError(f"{archive}: its {MANIFEST_FILE} is not valid JSON ({error})") from None
    return Manifest.parse(content, archive)


def verify_extracted(extracted: Path, manifest: Manifest, archive: Path) -> None:
    """The extracted archive holds exactly the files its manifest lists, inside its model folder, each with
    the sha256 recorded at export: anything else is a damaged, altered or foreign archive."""
    found = sorted(path.relative_to(extracted).as_posix() for path in extracted.rglob("*") if path.is_file())
    found = [name for name in found if name not in (MANIFEST_FILE, COMPLETION_MARKER)]
    check_inside_model(manifest, found, archive)
    if unlisted := sorted(set(found) - manifest.files.keys()):
        raise SDMCError(f"{archive}: holds files its manifest does not list ({', '.join(unlisted[:3])}); "
                        f"refusing the archive")
    if missing := sorted(manifest.files.keys() - set(found)):
        raise SDMCError(f"{archive}: lacks files its manifest lists ({', '.join(missing[:3])}); the archive is "
                        f"incomplete: export it again")
    if altered := [name for name, digest in sorted(manifest.files.items()) if sha256(extracted / name) != digest]:
        raise SDMCError(f"{archive}: {', '.join(altered[:3])}: content differs from the sha256 its manifest records "
                        f"(damaged or altered since the export); refusing the archive")


def installed_differences(results: Path, manifest: Manifest) -> list[str]:
    """The archive's files that the results folder lacks or holds with other content."""
    return [name for name, digest in sorted(manifest.files.items())
            if not (results / name).is_file() or sha256(results / name) != digest]


def _is_empty_folder(folder: Path) -> bool:
    return folder.is_dir() and not any(folder.iterdir())


def _check_dataset_id(results: Path, manifest: Manifest, dataset_id: int) -> None:
    """A second Dataset{ID}_ folder of the same id would make `-d ID` ambiguous for every command."""
    if others := [folder.name for folder in folders_with_id(results, dataset_id) if folder.name != manifest.dataset]:
        raise SDMCError(f"{results}: holds {others[0]}, another dataset with id {dataset_id}; installing "
                        f"{manifest.dataset} beside it would make `-d {dataset_id}` ambiguous: install into another "
                        f"SDMC_results")


def install(archive: Path, results: Path, max_extracted_bytes: int) -> tuple[Manifest, bool]:
    """Install the archive's model folder into `results`; its manifest, and whether anything was installed
    (False: the model folder holds the manifest's files already, so nothing is extracted). Refusals leave
    the files of `results` as they found them."""
    manifest = read_manifest(archive)
    target = results / manifest.dataset / manifest.model_folder
    _check_dataset_id(results, manifest, TrainedModel(target).dataset_id)
    if target.exists() and not _is_empty_folder(target):
        if differing := installed_differences(results, manifest):
            raise SDMCError(f"{target}: holds a different model ({len(differing)} of the archive's files differ "
                            f"there or are missing: {', '.join(differing[:3])}); it is left untouched: move it "
                            f"away, or install into another SDMC_results")
        return manifest, False
    staging = target.with_name(f".{target.name}.installing")
    created = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted installation: incomplete
        make_folder(target.parent)
        safe_extract(archive, staging, max_extracted_bytes)
        verify_extracted(staging, manifest, archive)
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()  # an empty folder in its place
        (staging / manifest.model_path).rename(target)
        return manifest, True
    except OSError as error:
        raise OutputWriteError(f"{target}: could not be installed ({error.strerror or error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; a folder holding the installed model is not empty
            with contextlib.suppress(OSError):
                folder.rmdir()


def predict_command(model: TrainedModel, manifest: Manifest) -> str:
    checkpoint = [] if layout.FINAL_CHECKPOINT in manifest.checkpoints else ["-chk", manifest.checkpoints[0]]
    return " ".join(["sdmc_predict -i IN -o OUT -d", str(model.dataset_id), "-tr", model.trainer, "-p",
                     model.plans_name, "-c", model.configuration, "-f", *manifest.folds, *checkpoint])


@console_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = paths.results_root()
    manifest, installed = install(args.archive, results, int(args.max_extracted_gb * 10**9))
    model = TrainedModel(results / manifest.dataset / manifest.model_folder)
    if installed:
        print(f"installed {manifest.model_path} (fold(s) {', '.join(manifest.folds)}) into {model.folder}")
    else:
        print(f"{model.folder}: already installed (it holds every file of {args.archive}); nothing to do")
    print(f"predict with: {predict_command(model, manifest)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
