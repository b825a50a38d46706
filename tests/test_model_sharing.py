"""`sdmc_export_model` and `sdmc_install_model`: a model shared as one zip archive predicts exactly as the
original does elsewhere; bad archives and outputs are refused with exit code 2, leaving the results folder
as it was."""

import json
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import pytest
from conftest import make_preprocessed_dataset, paths_set

from sdmcunet.experiment_planning.plans import load_plans
from sdmcunet.inference import predict
from sdmcunet.model_sharing import export_model, install_model
from sdmcunet.model_sharing.manifest import MANIFEST_FILE
from sdmcunet.training.trainers import TRAINERS

NAME = "Dataset2021_Stroke2021"
UNET = "UNetTrainer__sdmcPlans__2d"
SDMC = "SDMCFinetunedTrainer__sdmcPlans__2d"
CHECKPOINT = f"{NAME}/{UNET}/fold_0/checkpoint_final.pth"


def train(name: str, preprocessed: Path, fold: int, validate: bool = False) -> None:
    plans = load_plans(preprocessed / "sdmcPlans.json")
    trainer = TRAINERS.get(name)(plans, "2d", fold, preprocessed, "cpu", 1, 2, num_loader_workers=0)
    trainer.run_training()
    if validate:
        trainer.final_validation()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """U-Net folds 0 (validated) and 1, and SDMC-Seg fold 0 with its frozen mask autoencoder, 2 iterations each."""
    root = tmp_path_factory.mktemp("sharing")
    preprocessed = make_preprocessed_dataset(root, 5, 11, 64, "--cpu")
    with paths_set(SDMC_results=root / "results"):
        train("UNetTrainer", preprocessed, 0, validate=True)
        train("UNetTrainer", preprocessed, 1)
        train("MaskAutoencoderTrainer", preprocessed, 0)
        train("SDMCFinetunedTrainer", preprocessed, 0)
    return root


@pytest.fixture(scope="module")
def archives(trained) -> dict[str, Path]:
    """Each model exported with the defaults (every fold with checkpoint_final)."""
    with paths_set(SDMC_results=trained / "results"):
        for trainer in ("UNetTrainer", "SDMCFinetunedTrainer"):
            assert export_model.main(["-d", "2021", "-tr", trainer, "-o", str(trained / f"{trainer}.zip")]) == 0
    return {UNET: trained / "UNetTrainer.zip", SDMC: trained / "SDMCFinetunedTrainer.zip"}


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """A fresh results folder holding one unrelated file, so that "unchanged" means something."""
    folder = tmp_path / "installed"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    monkeypatch.setenv("SDMC_results", str(folder))
    return folder


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file below `folder` (hidden ones too) with its content and modification time, and every folder."""
    return {path.relative_to(folder).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns) if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


def manifest_of(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as zip_file:
        return json.loads(zip_file.read(MANIFEST_FILE))


def inputs(trained: Path, target: Path) -> Path:
    """Two raw slices (NIfTI, nnU-Net names) to predict."""
    target.mkdir()
    for image in sorted((trained / "raw" / NAME / "imagesTr").glob("*.nii.gz"))[:4]:
        shutil.copy(image, target / image.name)
    return target


# --- the round trip ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, trainer", [(UNET, "UNetTrainer"), (SDMC, "SDMCFinetunedTrainer")])
def test_an_installed_archive_predicts_byte_identical_label_maps(trained, archives, results, tmp_path, capsys,
                                                                 model, trainer):
    assert install_model.main([str(archives[model])]) == 0
    assert f"predict with: sdmc_predict -i IN -o OUT -d 2021 -tr {trainer}" in capsys.readouterr().out
    installed = results / NAME / model
    manifest = manifest_of(archives[model])
    assert sorted(manifest["files"]) == sorted(path.relative_to(results).as_posix()
                                               for path in installed.rglob("*") if path.is_file())
    slices = inputs(trained, tmp_path / "in")
    original, copy = tmp_path / "original", tmp_path / "copy"
    common = ["-i", str(slices), "-np", "0", "-device", "cpu"]
    assert predict.main([*common, "-o", str(original), "-m", str(trained / "results" / NAME / model)]) == 0
    assert predict.main([*common, "-o", str(copy), "-d", "2021", "-tr", trainer]) == 0
    label_maps = sorted(path.name for path in original.glob("*.nii.gz"))
    assert label_maps and label_maps == sorted(path.name for path in copy.glob("*.nii.gz"))
    assert all((original / name).read_bytes() == (copy / name).read_bytes() for name in label_maps)


def test_the_archive_holds_what_inference_needs_and_no_more(archives):
    unet = manifest_of(archives[UNET])
    assert (unet["trainer"], unet["plans"], unet["configuration"], unet["folds"]) == ("UNetTrainer", "sdmcPlans",
                                                                                      "2d", ["0", "1"])
    assert sorted(name.removeprefix(f"{NAME}/{UNET}/") for name in unet["files"]) == [
        "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth", "fold_0/validation/summary.json",
        "fold_1/checkpoint_final.pth", "plans.json"]  # no checkpoint_best, validation label maps or logs
    sdmc = manifest_of(archives[SDMC])["files"]
    assert f"{NAME}/{SDMC}/fold_0/mask_autoencoder/diffusion_pytorch_model.safetensors" in sdmc  # its frozen part
    with zipfile.ZipFile(archives[UNET]) as zip_file:
        assert sorted(zip_file.namelist()) == sorted([*unet["files"], MANIFEST_FILE])


def test_installing_the_same_archive_again_changes_nothing(archives, results, capsys):
    assert install_model.main([str(archives[UNET])]) == 0
    before = snapshot(results)
    assert install_model.main([str(archives[UNET])]) == 0
    assert "already installed" in capsys.readouterr().out
    assert snapshot(results) == before


def test_an_interrupted_installation_leaves_no_model_folder(archives, results, monkeypatch, capsys):
    """Ctrl-C after the extraction (the archive's files on disk, not yet in place): nothing is left."""
    before, verify = snapshot(results), install_model.verify_extracted

    def interrupt(*args) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(install_model, "verify_extracted", interrupt)
    assert install_model.main([str(archives[UNET])]) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert snapshot(results) == before
    monkeypatch.setattr(install_model, "verify_extracted", verify)
    assert install_model.main([str(archives[UNET])]) == 0


# --- refusals -------------------------------------------------------------------------------------------
def rewritten(archive: Path, target: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    """A copy of `archive` whose members (name -> content) `change` edits."""
    with zipfile.ZipFile(archive) as zip_file:
        members = {name: zip_file.read(name) for name in zip_file.namelist()}
    change(members)
    with zipfile.ZipFile(target, "w") as zip_file:
        for name, content in members.items():
            zip_file.writestr(name, content)
    return target


def edit_manifest(members: dict[str, bytes], edit: Callable[[dict], None]) -> None:
    manifest = json.loads(members[MANIFEST_FILE])
    edit(manifest)
    members[MANIFEST_FILE] = json.dumps(manifest).encode()


def add_other_model_listed(members: dict[str, bytes]) -> None:
    other = f"{NAME}/OtherTrainer__sdmcPlans__2d/plans.json"
    members[other] = b"{}"
    edit_manifest(members, lambda manifest: manifest["files"].update({other: "0" * 64}))


def tamper(members: dict[str, bytes]) -> None:
    members[CHECKPOINT] = members[CHECKPOINT][:-1] + bytes([members[CHECKPOINT][-1] ^ 1])


BAD_ARCHIVES = {
    "path traversal": (lambda members: members.update({f"{NAME}/{UNET}/../../../escaped.txt": b"x"}),
                       "points outside the target folder"),
    "files of two model folders": (lambda members: members.update({f"{NAME}/OtherTrainer__sdmcPlans__2d/plans.json": b"{}"}),
                                   "holds another model's files"),
    "two model folders in its manifest": (add_other_model_listed, "holds another model's files"),
    "a file its manifest does not list": (lambda members: members.update({f"{NAME}/{UNET}/fold_0/extra.txt": b"x"}),
                                          "holds files its manifest does not list"),
    "tampered checkpoint (sha256 mismatch)": (tamper, "content differs from the sha256 its manifest records"),
    "no manifest": (lambda members: members.pop(MANIFEST_FILE), "not an sdmcunet model archive"),
    "manifest naming a path as its model": (lambda members: edit_manifest(
        members, lambda manifest: manifest.update(model_folder="../UNetTrainer__sdmcPlans__2d")),
        "its manifest names no model folder"),
}


@pytest.mark.parametrize("change, message", BAD_ARCHIVES.values(), ids=BAD_ARCHIVES.keys())
def test_bad_archives_are_refused_leaving_the_results_folder_unchanged(archives, results, tmp_path, capsys,
                                                                       change, message):
    bad = rewritten(archives[UNET], tmp_path / "bad.zip", change)
    before = snapshot(results)
    assert install_model.main([str(bad)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error
    assert snapshot(results) == before
    assert not list(tmp_path.rglob("escaped.txt"))


def test_an_installation_over_a_different_model_is_refused(archives, results, capsys):
    assert install_model.main([str(archives[UNET])]) == 0
    (results / NAME / UNET / "plans.json").write_text("{}\n")  # another model of the same names
    before = snapshot(results)
    assert install_model.main([str(archives[UNET])]) == 2
    assert "holds a different model (1 of the archive's files differ there or are missing: " \
           f"{NAME}/{UNET}/plans.json)" in capsys.readouterr().err
    assert snapshot(results) == before


def test_an_installation_beside_another_dataset_of_the_same_id_is_refused(archives, results, capsys):
    (results / "Dataset2021_Other").mkdir()
    before = snapshot(results)
    assert install_model.main([str(archives[UNET])]) == 2
    assert "holds Dataset2021_Other, another dataset with id 2021" in capsys.readouterr().err
    assert snapshot(results) == before


@pytest.mark.parametrize("arguments, message", [
    (["-tr", "NoSuchTrainer"], "NoSuchTrainer__sdmcPlans__2d: no such model"),
    (["-tr", "UNetTrainer", "-f", "0", "3"], "fold checkpoint(s) missing: "),
    (["-tr", "UNetTrainer", "-chk", "checkpoint_latest.pth"], "no fold has checkpoint_latest.pth"),
], ids=["missing model", "fold without the checkpoint", "no fold with the checkpoint"])
def test_export_refuses_what_it_cannot_export(trained, tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.setenv("SDMC_results", str(trained / "results"))
    assert export_model.main(["-d", "2021", *arguments, "-o", str(tmp_path / "model.zip")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error
    assert not list(tmp_path.iterdir())  # no archive, no temporary file


def test_export_refuses_an_existing_output_unless_overwrite(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDMC_results", str(trained / "results"))
    output = tmp_path / "model.zip"
    output.write_bytes(b"mine")
    arguments = ["-d", "2021", "-tr", "UNetTrainer", "-f", "1", "-o", str(output)]
    assert export_model.main(arguments) == 2
    assert "model.zip: exists; choose another file name, or add --overwrite" in capsys.readouterr().err
    assert output.read_bytes() == b"mine"
    assert export_model.main([*arguments, "--overwrite"]) == 0
    assert manifest_of(output)["folds"] == ["1"] and sorted(tmp_path.iterdir()) == [output]


def test_export_refuses_frozen_weights_that_do_not_pair_with_the_checkpoint(trained, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "results" / NAME / SDMC
    shutil.copytree(trained / "results" / NAME / SDMC, copy)
    weights = copy / "fold_0" / "mask_autoencoder" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    monkeypatch.setenv("SDMC_results", str(tmp_path / "results"))
    assert export_model.main(["-d", "2021", "-tr", "SDMCFinetunedTrainer", "-o", str(tmp_path / "sdmc.zip")]) == 2
    assert "other mask_autoencoder weights than checkpoint_final.pth was trained with" in capsys.readouterr().err
    assert not (tmp_path / "sdmc.zip").exists()


def test_export_checks_folds_and_checkpoint_names_when_parsing(capsys):
    for arguments in (["-f", "../x"], ["-chk", "../plans.json"]):
        with pytest.raises(SystemExit) as exit_info:
            export_model.main(["-d", "2021", "-tr", "UNetTrainer", "-o", "model.zip", *arguments])
        assert exit_info.value.code == 2
    assert "argument -chk: must be a checkpoint file name such as checkpoint_final.pth" in capsys.readouterr().err
