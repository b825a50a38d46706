import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from sdmcunet.dataset_conversion import convert_stroke2021
from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release, main
from sdmcunet.experiment_planning.verify_dataset import verify_dataset
from sdmcunet.imageio import read_dicom_slice, read_nifti
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json

HEAD_CT = Path(get_testdata_file("693_UNCR.dcm"))
REAL = {"90001": "Hemorrhagic", "90004": "Hemorrhagic", "90002": "Ischemic", "90003": "Non-Stroke"}
TURKISH = {"Hemorrhagic": "KANAMA", "Ischemic": "ISKEMI", "Non-Stroke": "İNME YOK"}


def make_release(real_samples: Path, root: Path, folder_names=None, with_dicom=True, training_level=True) -> Path:
    """A release tree of the four real slices; the DICOM of each is the real 512x512 head CT."""
    base = root / "Training" if training_level else root
    for stem, folder in REAL.items():
        target = base / (folder_names or {}).get(folder, folder)
        for modality in ("PNG", "OVERLAY"):
            source = real_samples / folder / modality / f"{stem}.png"
            if source.exists():
                (target / modality).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target / modality / source.name)
        if with_dicom:
            (target / "DICOM").mkdir(parents=True, exist_ok=True)
            shutil.copy(HEAD_CT, target / "DICOM" / f"{stem}.dcm")
    return root


def painted(real_samples, stem):
    folder = REAL[stem]
    if folder == "Non-Stroke":
        return np.zeros((512, 512), bool)
    png = np.array(Image.open(real_samples / folder / "PNG" / f"{stem}.png"))[..., :3]
    overlay = np.array(Image.open(real_samples / folder / "OVERLAY" / f"{stem}.png"))[..., :3]
    return np.any(png != overlay, axis=-1)


def test_real_samples_convert_png_only_with_right_masks(real_samples, tmp_path):
    dataset = convert_release(real_samples, 2021, tmp_path / "raw")
    assert dataset.name == "Dataset2021_Stroke2021"
    meta = read_json(dataset / "dataset.json")
    assert meta["channel_names"] == {"0": "PNG"} and meta["numTraining"] == 4 and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "ischemic": 1, "hemorrhagic": 2}
    lesion_class = {"Hemorrhagic": 2, "Ischemic": 1, "Non-Stroke": 0}
    for stem, folder in REAL.items():
        label_map, _ = read_nifti(dataset / "labelsTr" / f"{stem}.nii.gz")
        np.testing.assert_array_equal(label_map > 0, painted(real_samples, stem))
        assert set(np.unique(label_map)) == ({0, lesion_class[folder]} if lesion_class[folder] else {0})
        image, _ = read_nifti(dataset / "imagesTr" / f"{stem}_0000.nii.gz")
        np.testing.assert_array_equal(image, np.array(Image.open(real_samples / folder / "PNG" / f"{stem}.png"))[..., 0])
    report = read_json(dataset / "conversion_report.json")
    assert report["channels"].startswith("PNG only") and report["n_skipped"] == 0
    assert report["n_converted_per_folder_class"] == {"HS": 2, "IS": 1, "NS": 1}
    assert verify_dataset(dataset) == []
    assert not any(p.name.startswith(".") for p in dataset.parent.iterdir())  # no partial folder left


def test_turkish_names_without_training_level_keep_hounsfield_units(real_samples, tmp_path):
    release = make_release(real_samples, tmp_path / "mirror", TURKISH, training_level=False)
    dataset = convert_release(release, 2021, tmp_path / "raw")
    assert read_json(dataset / "dataset.json")["channel_names"] == {"0": "CT", "1": "PNG"}
    ct, spacing = read_nifti(dataset / "imagesTr" / "90002_0000.nii.gz")
    np.testing.assert_array_equal(ct, read_dicom_slice(HEAD_CT).hounsfield)
    assert ct.dtype == np.int16 and spacing == pytest.approx((0.478516, 0.478516))
    label_map, label_spacing = read_nifti(dataset / "labelsTr" / "90002.nii.gz")
    assert label_spacing == spacing and set(np.unique(label_map)) == {0, 1}
    case_info = read_json(dataset / "case_info.json")
    assert case_info["90001"]["patient_id"] == "CQ500-CT-310" and case_info["90003"]["label_class"] == 0
    assert verify_dataset(dataset) == []


def test_nnunet_v2_reads_the_converted_dataset(real_samples, tmp_path, monkeypatch):
    pytest.importorskip("nnunetv2")
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(tmp_path / variable))
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    dataset = convert_release(make_release(real_samples, tmp_path / "release"), 2021, tmp_path / "raw")
    verify_dataset_integrity(str(dataset), num_processes=1)  # raises on any problem
    images, properties = SimpleITKIO().read_images([str(dataset / "imagesTr" / f"90001_{c:04d}.nii.gz") for c in (0, 1)])
    assert images.shape == (2, 1, 512, 512)
    assert properties["spacing"][1:] == pytest.approx([0.478516, 0.478516])


def test_bad_inputs_are_skipped_and_reported(real_samples, tmp_path):
    release = make_release(real_samples, tmp_path / "release")
    hemorrhagic = release / "Training" / "Hemorrhagic"
    (hemorrhagic / "DICOM" / "90004.dcm").write_bytes(HEAD_CT.read_bytes()[:5000])  # truncated
    (release / "Training" / "Ischemic" / "DICOM" / "90002.dcm").write_text("not a dicom")
    shutil.copy(hemorrhagic / "PNG" / "90001.png", hemorrhagic / "PNG" / "70001.png")  # PNG without DICOM
    for stem, overlay in [("70002", "small"), ("70003", "identical")]:
        shutil.copy(HEAD_CT, hemorrhagic / "DICOM" / f"{stem}.dcm")
        shutil.copy(hemorrhagic / "PNG" / "90001.png", hemorrhagic / "PNG" / f"{stem}.png")
        source = hemorrhagic / ("OVERLAY" if overlay == "small" else "PNG") / "90001.png"
        image = Image.open(source)
        (image.resize((256, 256)) if overlay == "small" else image).save(hemorrhagic / "OVERLAY" / f"{stem}.png")
    shutil.copytree(release / "Training" / "Non-Stroke" / "PNG", release / "Training" / "Ischemic" / "PNG", dirs_exist_ok=True)
    (hemorrhagic / "PNG" / "Thumbs.db").write_bytes(b"\0")
    (release / "Misc").mkdir()
    (release / "Misc" / "notes.txt").write_text("readme")

    dataset = convert_release(release, 2021, tmp_path / "raw")
    report = read_json(dataset / "conversion_report.json")
    reasons = {entry["case"]: entry["reason"] for entry in report["skipped"]}
    assert "truncated" in reasons["90004"] and "not a DICOM file" in reasons["90002"]
    assert reasons["70001"] == "DICOM and OVERLAY missing for this slice"
    assert "is (256, 256) but the PNG is (512, 512)" in reasons["70002"]
    assert "identical to its PNG" in reasons["70003"]
    assert "two classes" in reasons["90003"]
    ignored = {Path(entry["path"]).name for entry in report["ignored_files"]}
    assert {"Thumbs.db", "notes.txt"} <= ignored
    assert report["n_converted"] == 1 and sorted(p.name for p in (dataset / "labelsTr").iterdir()) == ["90001.nii.gz"]
    assert verify_dataset(dataset) == []


def test_empty_or_unknown_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SDMCError, match="no TEKNOFEST class folders"):
        convert_release(tmp_path / "empty", 2021, tmp_path / "raw")
    with pytest.raises(SDMCError, match="not a folder"):
        convert_release(tmp_path / "missing", 2021, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_existing_different_dataset_is_never_touched(real_samples, tmp_path):
    target = tmp_path / "raw" / "Dataset2021_Stroke2021"
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("user data")
    with pytest.raises(SDMCError, match="already holds a different dataset"):
        convert_release(real_samples, 2021, tmp_path / "raw")
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    with pytest.raises(SDMCError, match="already taken by"):
        convert_release(real_samples, 2021, tmp_path / "raw", name="Other")


def test_interrupted_conversion_resumes_and_a_finished_one_is_not_redone(real_samples, tmp_path, monkeypatch):
    release = make_release(real_samples, tmp_path / "release")
    real_convert = convert_stroke2021.convert_slice
    calls = []

    def interrupted_after_two(source, *args):
        calls.append(source.stem)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_convert(source, *args)

    monkeypatch.setattr(convert_stroke2021, "convert_slice", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        convert_release(release, 2021, tmp_path / "raw")
    assert not (tmp_path / "raw" / "Dataset2021_Stroke2021").exists()
    assert (tmp_path / "raw" / ".Dataset2021_Stroke2021.partial").is_dir()

    calls.clear()
    monkeypatch.setattr(convert_stroke2021, "convert_slice", lambda source, *a: calls.append(source.stem) or real_convert(source, *a))
    dataset = convert_release(release, 2021, tmp_path / "raw")
    assert len(calls) == 2  # only the slices not finished before the interruption
    reference = convert_release(release, 2021, tmp_path / "reference")
    for path in sorted((reference / "labelsTr").iterdir()) + sorted((reference / "imagesTr").iterdir()):
        counterpart = dataset / path.parent.name / path.name
        np.testing.assert_array_equal(read_nifti(counterpart)[0], read_nifti(path)[0])

    calls.clear()
    assert convert_release(release, 2021, tmp_path / "raw") == dataset and calls == []


def test_command_line_success_and_user_error(real_samples, tmp_path, capsys):
    release = make_release(real_samples, tmp_path / "release")
    assert main(["-i", str(release), "-o", str(tmp_path / "raw"), "-np", "2"]) == 0
    assert "4 slices" in capsys.readouterr().out
    assert verify_dataset(tmp_path / "raw" / "Dataset2021_Stroke2021") == []
    assert main(["-i", str(tmp_path / "nowhere"), "-o", str(tmp_path / "raw")]) == 2
    error = capsys.readouterr().err
    assert error.splitlines()[-1].startswith("error: ") and "nowhere" in error and "Traceback" not in error
