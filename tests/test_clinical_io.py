"""Clinical inputs and outputs (issue 19): a hospital's DICOM series (files without extensions, found by
content) and 3D NIfTI / NRRD / MHA volumes in; one 3D label map with the input's geometry, a DICOM SEG
referencing the source slices, and lesion volumes in mL out; cases split across processes.

The series are built from a real CT slice shipped by pydicom-data (`693_UNCR.dcm`), placed as slices of
one volume (each slice shifted, so that slices differ); geometry is checked against SimpleITK's own
DICOM series reader, and the SEG is read back with highdicom.
"""

import json
import math
from pathlib import Path

import highdicom
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from test_bad_input import refused, run, snapshot

from sdmcunet.dataset_conversion.demo_series import write_series
from sdmcunet.imageio import ImageGeometry
from sdmcunet.inference import predict
from sdmcunet.inference.dicom_seg import write_dicom_seg
from sdmcunet.inference.input_files import find_input_cases
from sdmcunet.inference.lesion_volumes import class_volumes, volume_report
from sdmcunet.inference.model_loading import load_model
from sdmcunet.inference.predictor import png_windows, prepare_case
from sdmcunet.labels import LABELS

REAL_CT = Path(get_testdata_file("693_UNCR.dcm"))  # a real 512 x 512 head CT slice (pydicom-data)
MODEL = "Dataset2021_Stroke2021/UNetTrainer__sdmcPlans__2d"  # reads the PNG channel: made from HU here
TILT = math.radians(20)  # an oblique series: slices tilted about the x axis
OBLIQUE = (1.0, 0.0, 0.0, 0.0, math.cos(TILT), math.sin(TILT))


def real_series(folder: Path, n_slices: int = 5, modality: str = "CT", frame_of_reference: bool = True) -> list[Path]:
    """`n_slices` files named IM0001... (no extension, shuffled against their order in space) of one oblique
    series made of the real slice; returns them in order along the slice normal."""
    return write_series(REAL_CT, folder, n_slices, 5.0, OBLIQUE, modality, frame_of_reference)


def model_arguments(trained: Path) -> list:
    return ["-m", trained / "results" / MODEL, "-np", 0]


def nifti_geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def assert_same_geometry(ours: sitk.Image, reference: sitk.Image) -> None:
    assert ours.GetSize() == reference.GetSize()
    for mine, theirs in zip(nifti_geometry(ours)[1:], nifti_geometry(reference)[1:]):
        assert np.allclose(mine, theirs, atol=1e-4), (nifti_geometry(ours), nifti_geometry(reference))


def test_a_dicom_series_without_extensions_is_one_volume_with_its_geometry_seg_and_volumes(trained, tmp_path, capsys):
    files = real_series(tmp_path / "series")
    (tmp_path / "series" / "DICOMDIR.txt").write_text("not an image")
    output = tmp_path / "out"
    assert run(predict.main, "-i", tmp_path / "series", "-o", output, *model_arguments(trained)) == 0, \
        capsys.readouterr().err
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    label_map = sitk.ReadImage(str(output / f"{uid}.nii.gz"))
    reader = sitk.ImageSeriesReader()  # SimpleITK's own ordering and geometry of the series
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series"), uid))
    assert_same_geometry(label_map, reader.Execute())
    # slice k of the volume is the prediction of the k-th file along the normal, predicted alone
    for index, path in enumerate(files):
        alone = tmp_path / f"alone{index}"
        alone.mkdir()
        (alone / "slice.dcm").write_bytes(path.read_bytes())
    label_volume = sitk.GetArrayFromImage(label_map)
    for index in range(len(files)):
        assert run(predict.main, "-i", tmp_path / f"alone{index}", "-o", tmp_path / f"alone_out{index}",
                   *model_arguments(trained)) == 0
        alone_map = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"alone_out{index}" / "slice.png")))
        assert np.array_equal(alone_map, label_volume[index])
    # the DICOM SEG references every source slice and holds the same labels in the same places
    seg = highdicom.seg.segread(output / f"{uid}_seg.dcm")
    sources = {str(pydicom.dcmread(path).SOPInstanceUID): index for index, path in enumerate(files)}
    assert {instance for _, _, instance in seg.get_source_image_uids()} == set(sources)
    assert [segment.SegmentLabel for segment in seg.SegmentSequence] == ["ischemic", "hemorrhagic"]
    for instance, index in sources.items():
        pixels = seg.get_pixels_by_source_instance([instance], combine_segments=True, skip_overlap_checks=True)
        assert np.array_equal(pixels[0], label_volume[index])
    # lesion volumes: the label map's, computed here independently
    volumes = json.loads((output / f"{uid}_volumes.json").read_text())
    voxel_ml = np.prod(label_map.GetSpacing()) / 1000
    for name, value in LABELS.items():
        if value:
            assert volumes["classes"][name]["volume_ml"] == pytest.approx((label_volume == value).sum() * voxel_ml)
    record = json.loads((output / "prediction_info.json").read_text())
    assert sorted(record["cases"][uid]["outputs"]) == sorted([f"{uid}.nii.gz", f"{uid}_seg.dcm",
                                                              f"{uid}_volumes.json"])
    assert sorted(record["cases"][uid]["inputs"]) == sorted(str(path.resolve()) for path in files)
    assert (output / "volumes.csv").read_text().splitlines()[0].startswith("case,class,volume_ml")


def test_the_dicom_seg_holds_known_lesions_on_the_right_slices(tmp_path):
    files = real_series(tmp_path / "series", n_slices=4)
    label_volume = np.zeros((4, 512, 512), dtype=np.uint8)
    label_volume[1, 100:150, 200:260] = 1
    label_volume[2, 300:310, 40:90] = 2
    write_dicom_seg(label_volume, tuple(files), LABELS, "UNetTrainer", tmp_path / "seg.dcm")
    seg = highdicom.seg.segread(tmp_path / "seg.dcm")
    assert seg.NumberOfFrames == 2  # one frame per slice and segment holding a lesion
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "55641003"  # infarct
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "50960005"  # hemorrhage
    for index, path in enumerate(files):
        instance = str(pydicom.dcmread(path).SOPInstanceUID)
        pixels = seg.get_pixels_by_source_instance([instance], combine_segments=True, skip_overlap_checks=True)
        assert np.array_equal(pixels[0], label_volume[index])
    first_frame = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    assert np.allclose([float(value) for value in first_frame],
                       [float(value) for value in pydicom.dcmread(files[1]).ImagePositionPatient])


def test_lesion_volumes_and_components_agree_with_simpleitk():
    label_volume = np.zeros((6, 40, 40), dtype=np.uint8)
    label_volume[1:3, 5:10, 5:10] = 1  # one ischemic lesion over two slices
    label_volume[4, 30:33, 30:33] = 1  # a second, separate one
    label_volume[2, 20:22, 20:30] = 2
    label_volume[3, 22:24, 30:32] = 2  # touches the first haemorrhage by a corner only: still one lesion
    geometry = ImageGeometry((0.5, 0.6, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    report = volume_report("case", label_volume, geometry, LABELS)
    for name, value in (("ischemic", 1), ("hemorrhagic", 2)):
        image = sitk.GetImageFromArray((label_volume == value).astype(np.uint8))
        image.SetSpacing(geometry.itk_spacing)
        components = sitk.ConnectedComponent(image, True)
        statistics = sitk.LabelShapeStatisticsImageFilter()
        statistics.Execute(components)
        sizes = [statistics.GetPhysicalSize(label) / 1000 for label in statistics.GetLabels()]
        entry = report["classes"][name]
        assert entry["components"] == len(sizes)
        assert entry["volume_ml"] == pytest.approx(sum(sizes)) and entry["largest_component_ml"] == pytest.approx(max(sizes))
    assert report["classes"]["hemorrhagic"]["components"] == 1
    draws = [label_volume, np.where(label_volume == 2, 0, label_volume)]
    spread = volume_report("case", label_volume, geometry, LABELS, draws)["classes"]["hemorrhagic"]["over_samples"]
    first = class_volumes(label_volume, np.prod(geometry.itk_spacing) / 1000, LABELS)["hemorrhagic"]["volume_ml"]
    assert spread["samples"] == 2 and spread["std_ml"] == pytest.approx(np.std([first, 0.0]))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_a_ct_volume_file_gives_a_label_volume_with_its_exact_geometry(trained, tmp_path, capsys, suffix):
    hounsfield = np.stack([np.roll(pydicom.dcmread(REAL_CT).pixel_array.astype(np.int16) - 1024, 5 * index, axis=0)
                           for index in range(3)])
    volume = sitk.GetImageFromArray(hounsfield)
    volume.SetSpacing((0.45, 0.7, 3.0))  # anisotropic
    volume.SetOrigin((-90.0, 12.5, 40.0))
    tilt = (1.0, 0.0, 0.0, 0.0, math.cos(TILT), -math.sin(TILT), 0.0, math.sin(TILT), math.cos(TILT))
    volume.SetDirection(tilt)  # oblique
    (tmp_path / "in").mkdir()
    sitk.WriteImage(volume, str(tmp_path / "in" / f"head{suffix}"))
    assert run(predict.main, "-i", tmp_path / "in", "-o", tmp_path / "out", *model_arguments(trained)) == 0, \
        capsys.readouterr().err
    label_map = sitk.ReadImage(str(tmp_path / "out" / "head.nii.gz"))
    assert_same_geometry(label_map, volume)
    assert (tmp_path / "out" / "head_volumes.json").is_file() and not list((tmp_path / "out").glob("*.dcm"))


def test_two_series_in_one_folder_are_two_volumes_and_irregular_series_are_predicted_slice_by_slice(
        trained, tmp_path, capsys):
    folder = tmp_path / "in"
    regular = real_series(folder / "a", n_slices=3)
    gapped = real_series(folder / "b", n_slices=4)
    gapped.pop(2).unlink()  # a missing slice
    for path in [*regular, *gapped]:
        path.rename(folder / f"{path.parent.name}_{path.name}")
    output = tmp_path / "out"
    assert run(predict.main, "-i", folder, "-o", output, *model_arguments(trained)) == 0, capsys.readouterr().err
    uid = str(pydicom.dcmread(folder / f"a_{regular[0].name}").SeriesInstanceUID)
    assert (output / f"{uid}.nii.gz").is_file()
    assert sorted(path.name for path in output.glob("b_*.png")) == sorted(f"b_{path.name}.png" for path in gapped)
    warnings = json.loads((output / "prediction_info.json").read_text())["warnings"]
    assert len(warnings) == 1 and "1 slice(s) missing" in warnings[0] and "predicted one by one" in warnings[0]


@pytest.mark.parametrize("damage, warning", [
    ("duplicate", "lie at the same position"),
    ("mixed sizes", "differ in size"),
    ("no position", "lack ImagePositionPatient"),
    ("uneven", "uneven spacing"),
])
def test_series_that_are_no_regular_volume_say_why(trained, tmp_path, capsys, damage, warning):
    files = real_series(tmp_path / "in", n_slices=4)
    dataset = pydicom.dcmread(files[2])
    if damage == "duplicate":
        dataset.ImagePositionPatient = pydicom.dcmread(files[1]).ImagePositionPatient
    elif damage == "mixed sizes":
        dataset.Rows, dataset.PixelData = 256, dataset.PixelData[:256 * 512 * 2]
    elif damage == "no position":
        del dataset.ImagePositionPatient
    else:
        dataset.ImagePositionPatient = [float(value) + 1.0 for value in dataset.ImagePositionPatient]
    dataset.save_as(files[2])
    assert run(predict.main, "-i", tmp_path / "in", "-o", tmp_path / "out", *model_arguments(trained)) == 0, \
        capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "prediction_info.json").read_text())
    assert len(record["warnings"]) == 1 and warning in record["warnings"][0]
    assert sorted(record["cases"]) == sorted(path.name for path in files)  # each slice a case of its own


def test_a_series_without_frame_of_reference_gets_no_seg_and_says_so(trained, tmp_path, capsys):
    real_series(tmp_path / "in", n_slices=3, frame_of_reference=False)
    assert run(predict.main, "-i", tmp_path / "in", "-o", tmp_path / "out", *model_arguments(trained)) == 0
    record = json.loads((tmp_path / "out" / "prediction_info.json").read_text())
    assert "no DICOM SEG" in record["warnings"][0]
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1 and not list((tmp_path / "out").glob("*.dcm"))


def test_a_non_ct_series_and_a_corrupt_series_are_reported_and_the_others_predicted(trained, tmp_path, capsys):
    folder = tmp_path / "in"
    good = real_series(folder / "good", n_slices=3)
    magnetic = real_series(folder / "mr", n_slices=3, modality="MR")
    corrupt = real_series(folder / "corrupt", n_slices=3)
    corrupt[1].write_bytes(corrupt[1].read_bytes()[:-5000])  # pixel data cut short, header intact
    for path in [*good, *magnetic, *corrupt]:
        path.rename(folder / f"{path.parent.name}_{path.name}")
    before = snapshot(folder)
    message = refused(capsys, run(predict.main, "-i", folder, "-o", tmp_path / "out", *model_arguments(trained)),
                      "2 input(s) could not be predicted (the rest were)", "modality MR, expected CT",
                      f"corrupt_{corrupt[1].name}", "truncated")
    assert "Traceback" not in message and snapshot(folder) == before
    good_uid = str(pydicom.dcmread(folder / f"good_{good[0].name}").SeriesInstanceUID)
    assert sorted(path.name for path in (tmp_path / "out").glob("*.nii.gz")) == [f"{good_uid}.nii.gz"]
    assert not [path for path in (tmp_path / "out").iterdir() if path.name.startswith(".")]


def test_a_4d_image_is_refused_naming_it(trained, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    frames = [sitk.GetImageFromArray(np.zeros((3, 16, 16), dtype=np.int16)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "in" / "perfusion.nii.gz"))
    refused(capsys, run(predict.main, "-i", tmp_path / "in", "-o", tmp_path / "out", *model_arguments(trained)),
            "perfusion.nii.gz", "4D image", "3D volumes")


def test_parts_of_a_split_job_cover_every_case_once(trained, tmp_path, capsys):
    folder = tmp_path / "in"
    for index in range(2):
        for path in real_series(folder / f"s{index}", n_slices=2):
            path.rename(folder / f"s{index}_{path.name}")
    pngs = sorted((trained / "release").rglob("PNG/*.png"))[:3]
    for png in pngs:
        (folder / png.name).write_bytes(png.read_bytes())
    output = tmp_path / "out"
    for part in (1, 0):
        assert run(predict.main, "-i", folder, "-o", output, *model_arguments(trained), "-num_parts", 2,
                   "-part_id", part) == 0
    cases = json.loads((output / "prediction_info.json").read_text())["cases"]
    assert len(cases) == 5 and len(list(output.glob("*.nii.gz"))) == 2 and len(list(output.glob("*.png"))) == 3
    whole = tmp_path / "whole"
    assert run(predict.main, "-i", folder, "-o", whole, *model_arguments(trained)) == 0
    def contents(folder: Path) -> dict[str, str]:
        """Each output's bytes; a DICOM SEG's only by name: it carries a new UID and the time it was made."""
        return {name: digest if not name.endswith("_seg.dcm") else "" for name, (_, digest) in snapshot(folder).items()
                if name != "prediction_info.json"}
    assert contents(whole) == contents(output)
    refused(capsys, run(predict.main, "-i", folder, "-o", output, *model_arguments(trained), "-num_parts", 2,
                        "-part_id", 2), "-part_id 2 is out of range", "0 .. 1")


def test_dicom_only_input_to_a_png_model_predicts_what_the_organisers_png_gives(trained, tmp_path, capsys):
    """The PNG channel made from HU with the window measured at conversion is the organisers' PNG (up to a
    grey level on a few pixels), so the model's label maps agree."""
    pngs = sorted((trained / "release").rglob("PNG/*.png"))[:4]
    (tmp_path / "png").mkdir()
    (tmp_path / "dicom").mkdir()
    for png in pngs:
        (tmp_path / "png" / png.name).write_bytes(png.read_bytes())
        dicom = pydicom.dcmread(png.parent.parent / "DICOM" / f"{png.stem}.dcm")
        dicom.SeriesInstanceUID = generate_uid()  # each slice alone: TEKNOFEST slices, not a volume
        dicom.save_as(tmp_path / "dicom" / f"{png.stem}.dcm")
    for kind in ("png", "dicom"):
        assert run(predict.main, "-i", tmp_path / kind, "-o", tmp_path / f"{kind}_out", *model_arguments(trained)) == 0
    model = load_model(trained / "results" / MODEL, None, "checkpoint_final.pth", torch.device("cpu"))
    channels = model.dataset.channel_names
    needed = {channel.source_channel for channel in model.configuration.input_channels}
    for kind in ("png", "dicom"):
        listing = find_input_cases(tmp_path / kind, model.dataset, needed, set(png_windows(model.configuration)))
        inputs = [prepare_case(case, model.configuration, channels, False).inputs for case in listing.cases.values()]
        if kind == "png":
            from_png = np.stack(inputs)
        else:  # the network's inputs: min-max normalised grey values, a grey level is 1/255
            assert np.abs(np.stack(inputs) - from_png).max() <= 1 / 255 + 1e-6
    for png in pngs:
        from_png, from_dicom = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{kind}_out" / png.name)))
                                for kind in ("png", "dicom"))
        assert (from_png == from_dicom).mean() > 0.99
