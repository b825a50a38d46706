"""What `sdmc_predict`, `sdmc_ensemble`, `sdmc_apply_postprocessing` and the fold validation read and write
(issue 17, items 2, 3, 4, 5 and 14): inputs are matched to the model's channels by name and never guessed from
a name pattern, every output folder records which model and options made it and refuses outputs of another,
and every NIfTI written copies the full geometry (spacing, origin, direction) of its reference image.

One small model (UNetTrainer, fold `all`, one iteration) is trained on one synthetic patient whose raw
images and labels lie at a non-trivial place in space (origin and direction), so that a writer that drops
the geometry is seen.
"""

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import DIRECTION, ORIGIN, place_in_space
from PIL import Image
from test_bad_input import refused, run, snapshot

from sdmcunet.ensembling import ensemble
from sdmcunet.imageio import ImageGeometry, read_nifti_with_geometry, read_png, read_slice, write_image, write_label_map
from sdmcunet.inference import predict
from sdmcunet.postprocessing import remove_small_components
from sdmcunet.raw_dataset import make_dataset_json
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_json, read_json

DATASET = "Dataset2021_Stroke2021"
MODEL = "UNetTrainer__sdmcPlans__2d"  # channels 0 CT, 1 PNG; reads the PNG
LABELS = {"background": 0, "ischemic": 1, "hemorrhagic": 2}


def geometry(path: Path) -> tuple:
    """Size, spacing (to float32 precision, as NIfTI stores it), origin and direction of an image file."""
    image = sitk.ReadImage(str(path))
    return image.GetSize(), tuple(np.float32(image.GetSpacing()).tolist()), image.GetOrigin(), image.GetDirection()


def model_folder(trained: Path) -> Path:
    return trained / "results" / DATASET / MODEL


def validation_folder(trained: Path) -> Path:
    return model_folder(trained) / "fold_all" / "validation"


def release_pngs(trained: Path) -> list[Path]:
    return sorted((trained / "release").rglob("PNG/*.png"))


def release_dicoms(trained: Path) -> list[Path]:
    return sorted((trained / "release").rglob("DICOM/*.dcm"))


def predict_into(trained: Path, inputs: Path, output: Path, *options) -> int:
    return run(predict.main, "-i", inputs, "-o", output, "-m", model_folder(trained), "-np", 0, *options)


def folder_of(tmp_path: Path, name: str, files: dict[str, Path]) -> Path:
    """A new folder `name` holding copies of `files` under new names."""
    folder = tmp_path / name
    folder.mkdir()
    for new_name, source in files.items():
        shutil.copy(source, folder / new_name)
    return folder


def written_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# ================================================================ item 2: `_000N` is a channel only in nnU-Net names

def test_predict_png_slices_named_like_channels_are_cases(trained, tmp_path, capsys):
    """`slice_0000.png ... slice_0003.png` are four slices (their whole stem is the case), not channels of `slice`."""
    pngs = release_pngs(trained)[:4]
    inputs = folder_of(tmp_path, "in", {**{f"slice_{index:04d}.png": png for index, png in enumerate(pngs)},
                                        **{f"copy{index}.png": png for index, png in enumerate(pngs)}})
    assert predict_into(trained, inputs, tmp_path / "out") == 0, capsys.readouterr().err
    assert "8 case(s) predicted" in capsys.readouterr().out
    for index in range(4):  # each is the prediction of its own picture
        np.testing.assert_array_equal(read_png(tmp_path / "out" / f"slice_{index:04d}.png"),
                                      read_png(tmp_path / "out" / f"copy{index}.png"))
    assert not (tmp_path / "out" / "slice.png").exists()


def test_predict_dicoms_named_like_channels_are_never_read_as_png(trained, tmp_path, capsys):
    """`slice_0001.dcm` is the CT of case slice_0001, never the PNG channel of a case `slice`: the PNG model
    makes its PNG from each slice's Hounsfield units. When no input can be predicted the message says so
    plainly (item 14)."""
    dicoms = {f"slice_{index:04d}.dcm": dicom for index, dicom in enumerate(release_dicoms(trained)[:6])}
    inputs = folder_of(tmp_path, "in", dicoms)
    before = snapshot(inputs)
    assert predict_into(trained, inputs, tmp_path / "out") == 0, capsys.readouterr().err
    label_maps = sorted(name for name in written_files(tmp_path / "out") if name.endswith(".png"))
    assert label_maps == [name.replace(".dcm", ".png") for name in sorted(dicoms)]
    assert snapshot(inputs) == before
    for path in inputs.iterdir():  # the same files cut short: none can be read
        path.write_bytes(path.read_bytes()[:200])
    message = refused(capsys, predict_into(trained, inputs, tmp_path / "out2"),
                      "none of the 6 input(s) could be predicted", "slice_0001.dcm")
    assert "the rest were" not in message
    assert written_files(tmp_path / "out2") == ["prediction_info.json"]


def test_predict_refuses_nnunet_names_it_cannot_match_listing_them(trained, tmp_path, capsys):
    """nnU-Net-looking names whose index is no channel of the model, or whose case lacks the channel the model
    reads, are one error listing every such file and how to name them; nothing is predicted."""
    image = trained / "raw" / DATASET / "imagesTr"
    case = sorted(image.glob("*_0001.nii.gz"))[0]
    inputs = folder_of(tmp_path, "in", {"good_0001.nii.gz": case, "good_0002.nii.gz": case,
                                        "alone_0000.nii.gz": case})
    refused(capsys, predict_into(trained, inputs, tmp_path / "out"),
            "good_0002.nii.gz", "alone_0000.nii.gz", "{case}_{channel:04d}", "0 CT, 1 PNG")
    assert not (tmp_path / "out").exists()


# ================================================================ item 5: channels matched by name (dataset.json)

def png_only_dataset(trained: Path, root: Path) -> Path:
    """A raw PNG-only dataset (its one channel, 0, is PNG) made of one slice of the release."""
    dataset = root / "Dataset900_PngOnly"
    (dataset / "imagesTr").mkdir(parents=True)
    atomic_write_json(dataset / "dataset.json", make_dataset_json({0: "PNG"}, LABELS, 1, ".nii.gz"))
    grey = read_png(release_pngs(trained)[0])[..., 0]
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(dataset / "imagesTr" / "90001_0000.nii.gz"))
    return dataset


def test_predict_png_only_dataset_matches_channels_by_name(trained, tmp_path, capsys):
    """A PNG-only dataset's channel 0 is the PNG that a CT+PNG model reads as its channel 1."""
    dataset = png_only_dataset(trained, tmp_path)
    assert predict_into(trained, dataset / "imagesTr", tmp_path / "out") == 0, capsys.readouterr().err
    # the same picture named with the model's own channel numbers (no dataset.json beside the folder)
    inputs = folder_of(tmp_path, "numbered", {"90001_0001.nii.gz": dataset / "imagesTr" / "90001_0000.nii.gz"})
    assert predict_into(trained, inputs, tmp_path / "expected") == 0, capsys.readouterr().err
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "90001.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "expected" / "90001.nii.gz"))))


def test_predict_refuses_another_datasets_numbering_without_its_dataset_json(trained, tmp_path, capsys):
    """Away from its dataset.json, `90001_0000.nii.gz` is the model's channel 0 (CT): the PNG the model reads is
    missing, and the message says where the numbering would be read."""
    dataset = png_only_dataset(trained, tmp_path)
    inputs = folder_of(tmp_path, "copied", {"90001_0000.nii.gz": dataset / "imagesTr" / "90001_0000.nii.gz"})
    refused(capsys, predict_into(trained, inputs, tmp_path / "out"), "90001_0000.nii.gz",
            "the model reads channel(s) PNG, which case 90001 lacks", "imagesTr/imagesTs")
    assert not (tmp_path / "out").exists()


# ================================================================ item 3: an output folder records what made it

def two_inputs(trained: Path, tmp_path: Path) -> Path:
    return folder_of(tmp_path, "in", {png.name: png for png in release_pngs(trained)[:2]})


def test_predict_refuses_an_output_folder_made_by_another_model(trained, tmp_path, capsys):
    inputs, output = two_inputs(trained, tmp_path), tmp_path / "out"
    assert predict_into(trained, inputs, output) == 0
    other = Path(shutil.copytree(model_folder(trained), tmp_path / "other" / MODEL))
    before = snapshot(output)
    refused(capsys, run(predict.main, "-i", inputs, "-o", output, "-m", other, "-np", 0),
            str(output), str(model_folder(trained)), str(other), "--overwrite")
    assert snapshot(output) == before
    # --overwrite redoes the folder: the other model's outputs go, even those of cases not predicted now
    (inputs / sorted(inputs.iterdir())[0].name).unlink()
    assert run(predict.main, "-i", inputs, "-o", output, "-m", other, "-np", 0, "--overwrite") == 0
    assert len(list(output.glob("*.png"))) == 1
    assert read_json(output / predict.RUN_RECORD)["model_folder"] == str(other)


def save_checkpoint_again(checkpoint: Path, change: float) -> None:
    """Save a checkpoint's state again, its first weight moved by `change` (0: the same weights, a new file)."""
    state = torch.load(checkpoint, weights_only=True)
    first = next(iter(state["network"]))
    state["network"][first] = state["network"][first] + change
    torch.save(state, checkpoint)


@pytest.mark.parametrize("change", ["--tta", "-seed 3", "-num_samples 2", "replaced checkpoint"])
def test_predict_refuses_outputs_made_with_other_options_or_weights(trained, tmp_path, capsys, change):
    model = Path(shutil.copytree(model_folder(trained), tmp_path / MODEL))
    inputs, output = two_inputs(trained, tmp_path), tmp_path / "out"
    assert run(predict.main, "-i", inputs, "-o", output, "-m", model, "-np", 0) == 0
    options = [] if change == "replaced checkpoint" else change.split()
    if change == "replaced checkpoint":
        save_checkpoint_again(model / "fold_all" / "checkpoint_final.pth", 0.5)
    before = snapshot(output)
    refused(capsys, run(predict.main, "-i", inputs, "-o", output, "-m", model, "-np", 0, *options),
            str(output), "--overwrite")
    assert snapshot(output) == before


def test_predict_accepts_the_same_weights_saved_again(trained, tmp_path, capsys):
    """`sdmc_train --c` of a finished fold saves checkpoint_final again: the same model, a new file time."""
    model = Path(shutil.copytree(model_folder(trained), tmp_path / MODEL))
    inputs, output = two_inputs(trained, tmp_path), tmp_path / "out"
    assert run(predict.main, "-i", inputs, "-o", output, "-m", model, "-np", 0) == 0
    save_checkpoint_again(model / "fold_all" / "checkpoint_final.pth", 0.0)
    assert run(predict.main, "-i", inputs, "-o", output, "-m", model, "-np", 0) == 0, capsys.readouterr().err
    assert "2 already done" in capsys.readouterr().out


def test_predict_accepts_additive_outputs_in_its_own_folder(trained, tmp_path, capsys):
    """Probabilities and overlays add files; they do not change the label maps."""
    inputs, output = two_inputs(trained, tmp_path), tmp_path / "out"
    assert predict_into(trained, inputs, output) == 0
    assert predict_into(trained, inputs, output, "--save_probabilities", "--overlays") == 0
    assert len(list(output.glob("*.npz"))) == 2 and len(list((output / "overlays").glob("*.png"))) == 2


def test_predict_records_its_model_before_the_first_output(trained, tmp_path, monkeypatch, capsys):
    """An interrupted run's folder says which model made its files."""
    def interrupted(*arguments, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict_folder", interrupted)
    assert predict_into(trained, two_inputs(trained, tmp_path), tmp_path / "out") == 130
    record = read_json(tmp_path / "out" / predict.RUN_RECORD)
    assert record["model_folder"] == str(model_folder(trained)) and record["trainer"] == "UNetTrainer"


def test_prediction_record_names_the_model_and_the_options(trained, tmp_path):
    inputs, output = two_inputs(trained, tmp_path), tmp_path / "out"
    assert predict_into(trained, inputs, output, "--tta") == 0
    record = read_json(output / predict.RUN_RECORD)
    assert record["command"] == "sdmc_predict" and record["trainer"] == "UNetTrainer" and record["folds"] == ["all"]
    assert record["tta"] is True and record["predicted"] == 2 and "tta" in record["compared_on_reruns"]


def validation_copies(trained: Path, tmp_path: Path, *names: str) -> list[Path]:
    return [Path(shutil.copytree(validation_folder(trained), tmp_path / name, ignore=shutil.ignore_patterns("*.json")))
            for name in names]


def test_ensemble_refuses_an_output_folder_made_from_other_inputs(trained, tmp_path, capsys):
    one, two, three = validation_copies(trained, tmp_path, "one", "two", "three")
    output = tmp_path / "ensemble"
    assert run(ensemble.main, "-i", one, two, "-o", output, "-np", 1) == 0
    before = snapshot(output)
    refused(capsys, run(ensemble.main, "-i", one, three, "-o", output, "-np", 1), str(output), str(two), str(three),
            "--overwrite")
    assert snapshot(output) == before
    assert run(ensemble.main, "-i", one, three, "-o", output, "-np", 1, "--overwrite") == 0
    assert run(ensemble.main, "-i", one, three, "-o", output, "-np", 1) == 0  # the same ensemble again


def postprocessing_file(path: Path, hemorrhagic: int) -> Path:
    atomic_write_json(path, {"remove_components_smaller_than": {"1": 0, "2": hemorrhagic}})
    return path


def test_postprocessing_refuses_an_output_folder_made_with_another_file(trained, tmp_path, capsys):
    (source,) = validation_copies(trained, tmp_path, "in")
    output = tmp_path / "out"
    first, second = postprocessing_file(tmp_path / "pp1.json", 5), postprocessing_file(tmp_path / "pp2.json", 50)
    assert run(remove_small_components.main, "-i", source, "-o", output, "-pp", first, "-np", 1) == 0
    before = snapshot(output)
    refused(capsys, run(remove_small_components.main, "-i", source, "-o", output, "-pp", second, "-np", 1),
            str(output), str(first), str(second), "--overwrite")
    assert snapshot(output) == before
    assert run(remove_small_components.main, "-i", source, "-o", output, "-pp", second, "-np", 1, "--overwrite") == 0


def test_an_output_folder_of_one_command_is_refused_by_another(trained, tmp_path, capsys):
    one, two = validation_copies(trained, tmp_path, "one", "two")
    output = tmp_path / "out"
    assert run(ensemble.main, "-i", one, two, "-o", output, "-np", 1) == 0
    before = snapshot(output)
    refused(capsys, predict_into(trained, two_inputs(trained, tmp_path), output), str(output), "sdmc_ensemble")
    assert snapshot(output) == before


def test_predict_refuses_a_folder_of_label_maps_of_unknown_origin(trained, tmp_path, capsys):
    """Label maps without a record (references, another program's) are neither mixed with new ones nor deleted."""
    output = Path(shutil.copytree(validation_folder(trained), tmp_path / "out"))
    (output / "summary.json").unlink()
    before = snapshot(output)
    inputs = two_inputs(trained, tmp_path)
    for overwrite in ([], ["--overwrite"]):
        refused(capsys, predict_into(trained, inputs, output, *overwrite), str(output), "no record of what made them")
    assert snapshot(output) == before


# ================================================================ item 4: NIfTI outputs keep the full geometry

def test_predict_nifti_label_maps_keep_the_image_geometry(trained, tmp_path, capsys):
    images = trained / "raw" / DATASET / "imagesTr"
    assert predict_into(trained, images, tmp_path / "out") == 0, capsys.readouterr().err
    outputs = sorted((tmp_path / "out").glob("*.nii.gz"))
    assert outputs
    for output in outputs:
        assert geometry(output) == geometry(images / output.name.replace(".nii.gz", "_0001.nii.gz"))
        assert sitk.ReadImage(str(output)).GetOrigin() == ORIGIN


def test_fold_validation_keeps_the_reference_geometry(trained):
    references = trained / "preprocessed" / DATASET / "gt_segmentations"
    outputs = sorted(validation_folder(trained).glob("*.nii.gz"))
    assert outputs
    for output in outputs:
        assert geometry(output) == geometry(references / output.name)
        assert sitk.ReadImage(str(output)).GetDirection() == DIRECTION


def test_ensemble_keeps_the_geometry_of_the_first_input(trained, tmp_path):
    one, two = validation_copies(trained, tmp_path, "one", "two")
    for path in one.glob("*.nii.gz"):  # the input folders' own geometry, whatever the validation wrote
        place_in_space(path)
        place_in_space(two / path.name, (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    assert run(ensemble.main, "-i", one, two, "-o", tmp_path / "out", "-np", 1) == 0
    for path in one.glob("*.nii.gz"):
        assert geometry(tmp_path / "out" / path.name) == geometry(path)


def test_postprocessing_keeps_the_geometry_of_its_input(trained, tmp_path):
    """Also a one-slice 3D volume (as nnU-Net writes 2D cases): it stays one, with its 3D geometry."""
    (source,) = validation_copies(trained, tmp_path, "in")
    for path in source.glob("*.nii.gz"):
        place_in_space(path)
    volume = sitk.GetImageFromArray(np.ones((1, 8, 8), np.uint8))
    volume.SetOrigin((-100.0, 50.0, 7.0))
    volume.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    volume.SetSpacing((0.5, 0.7, 3.0))
    sitk.WriteImage(volume, str(source / "volume.nii.gz"))
    pp = postprocessing_file(tmp_path / "pp.json", 5)
    assert run(remove_small_components.main, "-i", source, "-o", tmp_path / "out", "-pp", pp, "-np", 1) == 0
    for path in source.glob("*.nii.gz"):
        assert geometry(tmp_path / "out" / path.name) == geometry(path)


def test_writers_take_a_geometry_or_a_spacing(tmp_path):
    """The geometry a reader returns is what a writer copies; a (row, column) spacing alone still works (PNG
    stores nothing more)."""
    volume = tmp_path / "volume.nii.gz"
    image = sitk.GetImageFromArray(np.arange(12, dtype=np.int16).reshape(1, 3, 4))
    image.SetOrigin((-100.0, 50.0, 7.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    sitk.WriteImage(image, str(volume))
    values, image_geometry = read_nifti_with_geometry(volume)
    assert values.shape == (3, 4) and image_geometry.is_volume
    write_label_map(np.ones((3, 4), np.uint8), tmp_path / "labels.nii.gz", image_geometry)
    assert geometry(tmp_path / "labels.nii.gz")[1:] == geometry(volume)[1:]
    write_image(values, tmp_path / "spaced.nii.gz", (0.5, 0.25))
    assert read_nifti_with_geometry(tmp_path / "spaced.nii.gz")[1] == ImageGeometry.from_spacing((0.5, 0.25))
    write_label_map(np.ones((3, 4), np.uint8), tmp_path / "labels.png", image_geometry)
    assert read_png(tmp_path / "labels.png").shape == (3, 4)


# ================================================================ item 14: small ones

def test_dicom_files_ending_in_dot_dicom_are_read(trained, tmp_path):
    dicom = release_dicoms(trained)[0]
    renamed = shutil.copy(dicom, tmp_path / "slice.dicom")
    values, spacing = read_slice(renamed)
    np.testing.assert_array_equal(values, read_slice(dicom)[0])
    assert spacing == tuple(float(value) for value in pydicom.dcmread(dicom).PixelSpacing)


def test_predict_grey_and_alpha_png_through_its_grey_channel(trained, tmp_path, capsys):
    """A grey+alpha PNG is read through its grey values (the alpha is transparency, not intensity)."""
    png = release_pngs(trained)[0]
    grey = read_png(png)[..., 0]
    inputs = folder_of(tmp_path, "in", {"grey.png": png})
    alpha = np.random.default_rng(0).integers(0, 256, grey.shape, dtype=np.uint8)
    Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA").save(inputs / "alpha.png")
    assert predict_into(trained, inputs, tmp_path / "out") == 0, capsys.readouterr().err
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "alpha.png"), read_png(tmp_path / "out" / "grey.png"))
    np.testing.assert_array_equal(read_slice(inputs / "alpha.png")[0], grey)


def sixteen_bit_grey_alpha_png(shape: tuple[int, int]) -> bytes:
    """A valid 16-bit grey+alpha PNG (colour type 4, bit depth 16), which Pillow cannot write."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows, columns = shape
    raw = b"".join(b"\x00" + b"\x12\x34\xff\xff" * columns for _ in range(rows))
    header = struct.pack(">IIBBBBB", columns, rows, 16, 4, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_sixteen_bit_grey_and_alpha_png_is_refused_clearly(tmp_path):
    path = tmp_path / "alpha16.png"
    path.write_bytes(sixteen_bit_grey_alpha_png((3, 4)))
    with pytest.raises(SDMCError, match="16-bit grey.alpha PNG") as refusal:
        read_slice(path)
    assert str(path) in str(refusal.value)
