"""The manifest of a model archive: which model it holds, and the sha256 of every file.

It lies at the archive's root (`sdmc_model_manifest.json`); every other member lies below the one
model folder it names, at the path it has below `$SDMC_results`
(`Dataset2021_Stroke2021/SDMCFinetunedTrainer__sdmcPlans__2d/...`). An installer reads the names in
it before anything else, and they become folder names: `Manifest.parse` checks each one.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from sdmcunet import __version__
from sdmcunet.results import layout
from sdmcunet.results.trained_model import TrainedModel
from sdmcunet.utils.errors import SDMCError

MANIFEST_FILE = "sdmc_model_manifest.json"
FORMAT = "sdmcunet-model-archive-1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Manifest:
    dataset: str  # Dataset{ID}_{Name}
    model_folder: str  # {Trainer}__{Plans}__{configuration}
    folds: list[str]
    checkpoints: list[str]  # file names, in every fold
    files: dict[str, str]  # archive path -> sha256

    @property
    def model_path(self) -> str:
        """The model folder's path below the results folder, as archive paths start."""
        return f"{self.dataset}/{self.model_folder}"

    @property
    def _names(self) -> tuple[str, str, str]:
        """(trainer, plans name, configuration), as the model folder's name spells them."""
        names = layout.parse_model_folder_name(self.model_folder)
        if names is None:
            raise SDMCError(f"{self.model_path}: not named {{Trainer}}__{{Plans}}__{{configuration}}, as a model "
                            f"folder is")
        return names

    def to_json(self) -> dict:
        trainer, plans_name, configuration = self._names
        return {"format": FORMAT, "sdmcunet_version": __version__, "dataset": self.dataset,
                "model_folder": self.model_folder, "trainer": trainer, "plans": plans_name,
                "configuration": configuration, "folds": self.folds, "checkpoints": self.checkpoints,
                "files": dict(sorted(self.files.items()))}

    @classmethod
    def parse(cls, content: object, source: Path) -> "Manifest":
        """The manifest read from `source`; an SDMCError when it is no sdmcunet model manifest or names
        anything but plain folder names, files outside its model folder, or not what inference needs."""
        if not isinstance(content, dict) or content.get("format") != FORMAT:
            raise SDMCError(f"{source}: not an sdmcunet model archive (its {MANIFEST_FILE} has no '{FORMAT}' "
                            f"format mark); make one with sdmc_export_model")
        dataset, model_folder = content.get("dataset"), content.get("model_folder")
        folds, checkpoints, files = content.get("folds"), content.get("checkpoints"), content.get("files")
        if not (_is_plain_name(dataset) and _is_plain_name(model_folder)
                and TrainedModel(Path(dataset, model_folder)).dataset_id is not None
                and layout.parse_model_folder_name(model_folder) is not None):
            raise SDMCError(f"{source}: its manifest names no model folder Dataset{{ID}}_{{Name}}/"
                            f"{{Trainer}}__{{Plans}}__{{configuration}} (dataset {dataset!r}, model_folder "
                            f"{model_folder!r})")
        if not (_is_name_list(folds) and folds and _is_name_list(checkpoints) and checkpoints
                and isinstance(files, dict)
                and all(isinstance(name, str) and isinstance(digest, str) and _SHA256.match(digest)
                        for name, digest in files.items())):
            raise SDMCError(f"{source}: its manifest's folds, checkpoints or files are malformed (expected non-empty "
                            f"lists of names and a mapping of paths to sha256 digests)")
        manifest = cls(dataset, model_folder, folds, checkpoints, files)
        check_inside_model(manifest, list(files), source)
        if missing := sorted(set(manifest.needed_files()) - set(files)):
            raise SDMCError(f"{source}: its manifest lacks what inference needs: {', '.join(missing)}")
        return manifest

    def needed_files(self) -> list[str]:
        """The archive paths no model archive can lack: plans, dataset.json, each fold's checkpoints."""
        model = Path(self.model_path)
        return [(model / name).as_posix() for name in (layout.PLANS_FILE, layout.DATASET_FILE)] + [
            (layout.fold_folder(model, fold) / checkpoint).as_posix()
            for fold in self.folds for checkpoint in self.checkpoints]


def check_inside_model(manifest: Manifest, names: list[str], source: Path) -> None:
    """Refuse an archive naming files outside its one model folder: they would be installed as another
    model's (or another dataset's) files, which no installation of this model may touch."""
    prefix = f"{manifest.model_path}/"
    outside = sorted(name for name in names if not name.startswith(prefix)
                     or any(part in ("", ".", "..") for part in name.removeprefix(prefix).split("/")))
    if outside:
        raise SDMCError(f"{source}: holds another model's files ({', '.join(outside[:3])}"
                        f"{', ...' if len(outside) > 3 else ''}); a model archive holds the one model folder its "
                        f"manifest names, {manifest.model_path}; refusing the archive")


def _is_plain_name(name: object) -> bool:
    """A name that is one folder of its parent, neither hidden nor a way out of it."""
    return (isinstance(name, str) and bool(name) and not name.startswith(".") and "/" not in name
            and "\\" not in name and all(ord(character) >= 32 for character in name))


def _is_name_list(names: object) -> bool:
    return isinstance(names, list) and all(_is_plain_name(name) for name in names)
