"""`sdmc_export_model`: one zip archive holding a trained model as inference needs it.

    sdmc_export_model -d 2021 -tr SDMCFinetunedTrainer -o sdmc_stroke2021.zip
    sdmc_export_model -d 2021 -tr UNetTrainer -f 0 1 -chk checkpoint_final.pth checkpoint_best.pth -o unet.zip

Install it elsewhere with `sdmc_install_model ARCHIVE`.
"""

import argparse
import fnmatch
import hashlib
import json
import zipfile
from pathlib import Path

from sdmcunet.model_sharing.manifest import MANIFEST_FILE, Manifest
from sdmcunet.results import layout
from sdmcunet.results.checkpoints import FROZEN_PARTS, WEIGHTS_FILE, load_checkpoint
from sdmcunet.results.trained_model import FoldResult, TrainedModel
from sdmcunet.utils.cli import console_entry, non_negative_int
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_output, sha256

_CHUNK_BYTES = 1 << 20


def fold_argument(text: str) -> str:
    """`-f`: a fold number or 'all', checked at parse time (it becomes a folder name)."""
    if not (text.isdigit() or text == "all"):
        raise argparse.ArgumentTypeError(f"must be a fold number or 'all', got {text!r}")
    return str(int(text)) if text.isdigit() else text


def checkpoint_argument(text: str) -> str:
    """`-chk`: a checkpoint file name of a fold folder (it becomes a path in the archive)."""
    if "/" in text or "\\" in text or not fnmatch.fnmatchcase(text, layout.CHECKPOINT_PATTERN):
        raise argparse.ArgumentTypeError(f"must be a checkpoint file name such as {layout.FINAL_CHECKPOINT}, "
                                         f"got {text!r}")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdmc_export_model", description=__doc__.splitlines()[0])
    parser.add_argument("-d", dest="dataset_id", type=non_negative_int, required=True, help="dataset id")
    parser.add_argument("-tr", dest="trainer", required=True, help="trainer name")
    parser.add_argument("-p", dest="plans", default="sdmcPlans", help="plans name (default sdmcPlans)")
    parser.add_argument("-c", dest="configuration", default="2d", help="configuration (default 2d)")
    parser.add_argument("-f", dest="folds", nargs="+", type=fold_argument, default=None,
                        help="folds to export (default: every fold with the checkpoints); 'all' for fold_all")
    parser.add_argument("-chk", dest="checkpoints", nargs="+", type=checkpoint_argument,
                        default=[layout.FINAL_CHECKPOINT],
                        help=f"checkpoint file(s) of each fold to export (default {layout.FINAL_CHECKPOINT})")
    parser.add_argument("-o", dest="output", type=Path, required=True, help="the zip archive to write")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    args = parser.parse_args(argv)
    args.checkpoints = list(dict.fromkeys(args.checkpoints))  # each once in every fold
    return args


def chosen_folds(model: TrainedModel, folds: list[str] | None, checkpoints: list[str]) -> list[FoldResult]:
    """The requested folds (default: every fold holding all `checkpoints`); an error naming any that lacks one."""
    available = [fold.name for fold in model.finished_folds(checkpoints[0])
                 if all((fold.folder / checkpoint).is_file() for checkpoint in checkpoints)]
    if folds is None and not available:
        raise SDMCError(f"{model.folder}: no fold has {' and '.join(checkpoints)}; is training finished?")
    chosen = [model.fold(name) for name in dict.fromkeys(folds or available)]
    missing = [str(fold.folder / checkpoint) for fold in chosen for checkpoint in checkpoints
               if not (fold.folder / checkpoint).is_file()]
    if missing:
        choice = f"export the folds that have them (-f {' '.join(available)})" if available else "train them first"
        raise SDMCError(f"{model.folder}: fold checkpoint(s) missing: {', '.join(missing)}; train those folds with "
                        f"sdmc_train, or {choice}")
    return chosen


def frozen_part_files(checkpoint: Path) -> list[Path]:
    """The frozen parts' folders a checkpoint needs beside it (SDMC's mask autoencoder), checked against the
    sha256 it records: an archive of weights that do not pair with their checkpoint would be useless."""
    parts = load_checkpoint(checkpoint, mmap=True).get(FROZEN_PARTS, {})  # mmap: the weights are not read
    files = []
    for name, digest in parts.items():
        weights = checkpoint.parent / name / WEIGHTS_FILE
        if Path(name).name != name or not weights.is_file() or sha256(weights) != digest:
            raise SDMCError(f"{weights}: missing, or other {name} weights than {checkpoint.name} was trained with; "
                            f"train the fold again before exporting it")
        files += sorted(path for path in weights.parent.rglob("*") if path.is_file())
    return files


def fold_files(fold: FoldResult, checkpoints: list[str]) -> list[Path]:
    """What inference reads from a fold folder (its checkpoints and their frozen parts), and the fold's
    validation summary, which says how good the model is; no validation predictions or logs."""
    files = [fold.folder / checkpoint for checkpoint in checkpoints]
    files += [path for checkpoint in files for path in frozen_part_files(checkpoint)]
    summary = fold.validation / layout.SUMMARY_FILE
    return list(dict.fromkeys([*files, *([summary] if summary.is_file() else [])]))


def model_files(model: TrainedModel, folds: list[FoldResult], checkpoints: list[str]) -> list[Path]:
    """The model folder's description (plans, dataset.json, and the fingerprint where training kept one),
    then each fold's files."""
    description = [model.folder / name for name in (layout.PLANS_FILE, layout.DATASET_FILE, layout.FINGERPRINT_FILE)]
    if missing := [str(path) for path in description[:2] if not path.is_file()]:
        raise SDMCError(f"{model.folder}: not a complete model folder ({', '.join(missing)} missing)")
    return [path for path in description if path.is_file()] + [
        path for fold in folds for path in fold_files(fold, checkpoints)]


def _add_file(archive: zipfile.ZipFile, path: Path, name: str) -> str:
    """Stream `path` into the archive as `name`; the sha256 of the bytes written, so the manifest describes
    exactly what the archive holds even if the file changed since it was chosen."""
    digest = hashlib.sha256()
    info = zipfile.ZipInfo.from_file(path, name)  # its size decides whether the member needs zip64
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(path, "rb") as source, archive.open(info, "w") as sink:
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
            sink.write(chunk)
    return digest.hexdigest()


def write_archive(output: Path, model: TrainedModel, folds: list[FoldResult], checkpoints: list[str],
                  files: list[Path]) -> Manifest:
    """The zip of `files` at their paths below the results folder, and its manifest; written to a temporary
    file renamed over `output` once complete, so no reader ever sees half an archive."""
    names = [path.relative_to(model.folder.parent.parent).as_posix() for path in files]
    with atomic_output(output) as temporary, zipfile.ZipFile(temporary, "w") as archive:
        digests = {name: _add_file(archive, path, name) for path, name in zip(files, names)}
        manifest = Manifest(model.folder.parent.name, model.name, [fold.name for fold in folds], checkpoints, digests)
        archive.writestr(MANIFEST_FILE, json.dumps(manifest.to_json(), indent=2) + "\n", zipfile.ZIP_DEFLATED)
    return manifest


def _check_output(output: Path, overwrite: bool) -> None:
    if output.is_dir():
        raise SDMCError(f"{output}: is a folder; give the archive's file name, e.g. {output / 'model.zip'}")
    if output.exists() and not overwrite:
        raise SDMCError(f"{output}: exists; choose another file name, or add --overwrite to replace it")


@console_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _check_output(args.output, args.overwrite)
    model = TrainedModel.find(args.dataset_id, args.trainer, args.plans, args.configuration)
    folds = chosen_folds(model, args.folds, args.checkpoints)
    files = model_files(model, folds, args.checkpoints)
    manifest = write_archive(args.output, model, folds, args.checkpoints, files)
    megabytes = args.output.stat().st_size / 1e6
    print(f"exported {manifest.model_path} (fold(s) {', '.join(manifest.folds)}; {len(manifest.files)} files, "
          f"{megabytes:.1f} MB) into {args.output}; install it with "
          f"sdmc_install_model {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
