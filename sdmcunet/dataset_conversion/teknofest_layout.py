"""Finding the slices of a TEKNOFEST-2021 release on disk, whatever the mirror calls its folders.

The release holds `Training/{Hemorrhagic,Ischemic}/{PNG,DICOM,OVERLAY}` and
`Training/Non-Stroke/{PNG,DICOM}`; mirrors use Turkish names (`KANAMA`, `ISKEMI`, `INMEYOK`,
`Kanama Veri Seti`, ...), drop the `Training/` level or nest the class folders deeper. A
modality folder is recognised by its name, its class by the name of the folder holding it;
files of one slice share their stem across the modality folders.
"""

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC, NON_STROKE
from sdmcunet.utils.errors import SDMCError

CLASS_NAME_PREFIXES = {
    HEMORRHAGIC: ("hemorrhag", "haemorrhag", "hemoraj", "kanama"),
    ISCHEMIC: ("ischemi", "ischaemi", "iskemi"),
    NON_STROKE: ("nonstroke", "nostroke", "inmeyok", "normal"),
}
MODALITY_NAMES = {"png": "png", "dicom": "dicom", "dcm": "dicom", "overlay": "overlay"}
MODALITY_SUFFIXES = {"png": ".png", "dicom": ".dcm", "overlay": ".png"}
MAX_DEPTH = 6


def normalise_folder_name(name: str) -> str:
    """Lower-case ASCII letters and digits only: 'İnme Yok' -> 'inmeyok', 'Non-Stroke' -> 'nonstroke'."""
    decomposed = unicodedata.normalize("NFKD", name.replace("ı", "i"))
    ascii_only = "".join(char for char in decomposed if not unicodedata.combining(char))
    return "".join(char for char in ascii_only.casefold() if char.isascii() and char.isalnum())


def folder_class(name: str) -> int | None:
    normalised = normalise_folder_name(name)
    for label, prefixes in CLASS_NAME_PREFIXES.items():
        if normalised.startswith(prefixes):
            return label
    return None


@dataclass
class SourceSlice:
    stem: str
    folder_class: int
    class_folder: str  # the folder name as found, for reports
    files: dict[str, Path] = field(default_factory=dict)  # modality -> file


@dataclass
class SourceInventory:
    root: Path
    slices: dict[str, SourceSlice]
    has_dicom: bool
    ignored: list[dict] = field(default_factory=list)  # {"path", "reason"}
    conflicts: list[dict] = field(default_factory=list)  # {"case", "reason"}: slices dropped


def scan_release(root: Path) -> SourceInventory:
    """Find every slice under `root`; unknown folders, stray files and clashes are listed."""
    if not root.is_dir():
        raise SDMCError(f"{root}: not a folder (expected an extracted TEKNOFEST-2021 release)")
    inventory = SourceInventory(root=root, slices={}, has_dicom=False)
    modality_folders = _modality_folders(root, inventory)
    if not modality_folders:
        raise SDMCError(
            f"{root}: no TEKNOFEST class folders with PNG/DICOM/OVERLAY inside "
            f"(expected e.g. Training/Hemorrhagic/PNG or KANAMA/PNG)"
        )
    clashing: set[str] = set()
    for folder, label, modality in modality_folders:
        inventory.has_dicom |= modality == "dicom"
        for path in sorted(folder.iterdir()):
            _add_file(inventory, path, folder, label, modality, clashing)
    for stem in clashing:
        inventory.slices.pop(stem, None)
    return inventory


def _modality_folders(root: Path, inventory: SourceInventory) -> list[tuple[Path, int, str]]:
    found = []
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        for child in sorted(folder.iterdir()):
            if not child.is_dir() or child.name.startswith("."):
                continue
            modality = MODALITY_NAMES.get(normalise_folder_name(child.name))
            label = folder_class(folder.name)
            if modality and label is not None:
                found.append((child, label, modality))
            elif depth < MAX_DEPTH:
                pending.append((child, depth + 1))
            else:
                inventory.ignored.append({"path": str(child), "reason": "folder nested too deep, not searched"})
    _list_unrecognised_files(root, {folder for folder, _, _ in found}, inventory)
    return found


def _list_unrecognised_files(root: Path, modality_folders: set[Path], inventory: SourceInventory) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.parent not in modality_folders and not _inside_hidden(path, root):
            inventory.ignored.append({"path": str(path), "reason": "not inside a recognised class/modality folder"})


def _inside_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _add_file(inventory: SourceInventory, path: Path, folder: Path, label: int, modality: str,
              clashing: set[str]) -> None:
    if not path.is_file() or path.suffix.lower() != MODALITY_SUFFIXES[modality]:
        inventory.ignored.append({"path": str(path), "reason": f"not a {MODALITY_SUFFIXES[modality]} file"})
        return
    stem = path.stem
    entry = inventory.slices.setdefault(stem, SourceSlice(stem, label, folder.parent.name))
    if entry.folder_class != label:
        inventory.conflicts.append({
            "case": stem,
            "reason": f"stem appears in two classes ({entry.class_folder} and {folder.parent.name}); dropped",
        })
        clashing.add(stem)
    elif modality in entry.files:
        inventory.conflicts.append({
            "case": stem, "reason": f"two {modality} files ({entry.files[modality]} and {path}); dropped",
        })
        clashing.add(stem)
    else:
        entry.files[modality] = path
