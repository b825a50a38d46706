"""sdmc_make_synthetic: layout, file formats, ground truth, determinism, safety and CLI."""

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from sdmcunet.dataset_conversion.overlay import label_map_from_overlay
from sdmcunet.dataset_conversion.phantom import render_slice
from sdmcunet.dataset_conversion.synthetic import (
    MARKER_NAME, brain_window, class_folder, main, make_synthetic_dataset, plan_slices,
)
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC
from sdmcunet.utils.errors import SDMCError

# Five patients at 128 pixels: 32 slices, one patient wider than high, one slice with both
# lesion kinds, patients 2 and 5 with the BitsStored pitfall (checked by the tests below).
PATIENTS, SEED, SIZE = 5, 34, 128
EXPECTED_FOLDERS = {
    "Training/Hemorrhagic/PNG", "Training/Hemorrhagic/DICOM", "Training/Hemorrhagic/OVERLAY",
    "Training/Ischemic/PNG", "Training/Ischemic/DICOM", "Training/Ischemic/OVERLAY",
    "Training/Non-Stroke/PNG", "Training/Non-Stroke/DICOM",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("synthetic") / "stroke"
    make_synthetic_dataset(output_dir, PATIENTS, SEED, SIZE, progress=False)
    return output_dir


@pytest.fixture(scope="module")
def slices():
    """(record, phantom slice) for every slice of the dataset, from the generator itself."""
    return [(record, render_slice(record.patient, record.slice_index))
            for record in plan_slices(PATIENTS, SEED, SIZE)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _stems(folder: Path) -> set[str]:
    return {path.stem for path in folder.iterdir()}


def _raw_hounsfield(dataset: pydicom.Dataset) -> np.ndarray:
    """HU from the stored bytes, ignoring BitsStored (the values are the truth)."""
    dtype = "<i2" if dataset.PixelRepresentation else "<u2"
    stored = np.frombuffer(dataset.PixelData, dtype=dtype).reshape(dataset.Rows, dataset.Columns)
    return stored.astype(np.int32) * int(dataset.RescaleSlope) + int(dataset.RescaleIntercept)


def test_layout_and_file_names(dataset, slices):
    folders = {str(path.relative_to(dataset)) for path in dataset.rglob("*") if path.is_dir()}
    class_folders = {"Training", "Training/Hemorrhagic", "Training/Ischemic", "Training/Non-Stroke"}
    assert folders == EXPECTED_FOLDERS | class_folders
    assert sorted(path.name for path in dataset.iterdir()) == ["Training", MARKER_NAME]
    for folder in EXPECTED_FOLDERS:
        extension = "dcm" if folder.endswith("DICOM") else "png"
        assert all(re.fullmatch(rf"\d{{5}}\.{extension}", path.name) for path in (dataset / folder).iterdir())
    stems_per_class = {}
    for name in ("Hemorrhagic", "Ischemic", "Non-Stroke"):
        kinds = ("PNG", "DICOM", "OVERLAY") if name != "Non-Stroke" else ("PNG", "DICOM")
        stem_sets = [_stems(dataset / "Training" / name / kind) for kind in kinds]
        assert all(stems == stem_sets[0] for stems in stem_sets), name
        assert stem_sets[0], f"no {name} slice"
        stems_per_class[name] = stem_sets[0]
    all_stems = [stem for stems in stems_per_class.values() for stem in stems]
    assert len(all_stems) == len(set(all_stems)) == len(slices)


def test_files_hold_the_generators_ground_truth(dataset, slices):
    for record, phantom in slices:
        folder = dataset / "Training" / class_folder(phantom.label_map)
        png = np.asarray(Image.open(folder / "PNG" / f"{record.stem}.png"))
        assert png.shape == phantom.hounsfield.shape + (4,)
        assert (png[..., 0] == png[..., 1]).all() and (png[..., 1] == png[..., 2]).all() and (png[..., 3] == 255).all()
        assert np.array_equal(png[..., 0], brain_window(phantom.hounsfield))
        header = pydicom.dcmread(folder / "DICOM" / f"{record.stem}.dcm")
        assert np.array_equal(_raw_hounsfield(header), phantom.hounsfield)
        if phantom.label_map.any():
            overlay = np.asarray(Image.open(folder / "OVERLAY" / f"{record.stem}.png"))
            reading = label_map_from_overlay(png, overlay, fallback_class=0)
            assert np.array_equal(reading.label_map, phantom.label_map), record.stem
            assert not reading.ambiguities


def test_a_slice_with_both_lesion_kinds_goes_to_hemorrhagic(dataset, slices):
    mixed = [record for record, phantom in slices
             if {ISCHEMIC, HEMORRHAGIC} <= set(np.unique(phantom.label_map))]
    assert mixed
    assert all((dataset / "Training/Hemorrhagic/OVERLAY" / f"{record.stem}.png").is_file() for record in mixed)


def test_dicom_headers(dataset, slices):
    headers = {path.stem: pydicom.dcmread(path) for path in dataset.glob("Training/*/DICOM/*.dcm")}
    by_patient = {}
    for record, _ in slices:
        header = headers[str(record.stem)]
        assert header.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert header.SOPClassUID == CTImageStorage and header.Modality == "CT"
        assert header.PatientID == f"SYN{SEED}-{record.patient.index:04d}"
        assert header.InstanceNumber == record.slice_index + 1
        assert header.BitsAllocated == 16 and header.HighBit == header.BitsStored - 1
        assert (header.PixelRepresentation, header.RescaleIntercept) in {(0, -1024), (1, 0)}
        by_patient.setdefault(header.PatientID, []).append(header)
    assert len(by_patient) == PATIENTS
    for series in by_patient.values():
        assert len({(h.StudyInstanceUID, h.SeriesInstanceUID, tuple(h.PixelSpacing)) for h in series}) == 1
    assert len({h.SOPInstanceUID for h in headers.values()}) == len(headers)
    assert {h.PixelRepresentation for h in headers.values()} == {0, 1}

    def needs_more_than_12_bits(header) -> bool:
        stored = _raw_hounsfield(header) - int(header.RescaleIntercept)
        return stored.max() > (2047 if header.PixelRepresentation else 4095)

    pitfall = {h.PatientID for h in headers.values() if h.BitsStored == 12 and needs_more_than_12_bits(h)}
    assert pitfall == {f"SYN{SEED}-0002"}


def test_some_patients_are_wider_than_high(slices):
    shapes = {phantom.hounsfield.shape for _, phantom in slices}
    assert (SIZE, SIZE) in shapes
    assert any(rows == SIZE and SIZE < columns <= 1.2 * SIZE for rows, columns in shapes)


def test_lesions_lie_inside_the_brain(slices):
    for _, phantom in slices:
        assert not (phantom.label_map.astype(bool) & ~phantom.brain_mask).any()


def test_no_global_hounsfield_band_segments_the_lesions(slices):
    """Pooled over the slices, the best HU band inside the brain finds neither lesion kind."""
    hounsfield = np.concatenate([phantom.hounsfield[phantom.brain_mask] for _, phantom in slices])
    label_map = np.concatenate([phantom.label_map[phantom.brain_mask] for _, phantom in slices])
    edges = np.arange(-20, 122, 2)
    for label in (ISCHEMIC, HEMORRHAGIC):
        lesion = label_map == label
        best_dice = max(
            2 * np.count_nonzero(band & lesion) / (np.count_nonzero(band) + np.count_nonzero(lesion))
            for low in edges for high in edges[edges > low]
            for band in [(hounsfield >= low) & (hounsfield < high)]
        )
        assert best_dice < 0.5, (label, best_dice)


def test_same_seed_same_bytes_other_seed_other_bytes(dataset, tmp_path):
    make_synthetic_dataset(tmp_path / "again", PATIENTS, SEED, SIZE, progress=False)
    assert _files(tmp_path / "again") == _files(dataset)
    make_synthetic_dataset(tmp_path / "other", PATIENTS, SEED + 1, SIZE, progress=False)
    assert _files(tmp_path / "other") != _files(dataset)


def test_each_class_present_with_three_patients():
    for seed in range(4):
        folders = {class_folder(render_slice(record.patient, record.slice_index).label_map)
                   for record in plan_slices(3, seed, 64)}
        assert folders == {"Hemorrhagic", "Ischemic", "Non-Stroke"}, seed


def test_rerun_completes_an_interrupted_run(tmp_path):
    output_dir = tmp_path / "stroke"
    make_synthetic_dataset(output_dir, 3, 1, 64, progress=False)
    complete = _files(output_dir)
    removed = sorted(output_dir.glob("Training/*/PNG/*.png"))[:2] + sorted(output_dir.glob("Training/*/OVERLAY/*"))[:1]
    for path in removed:
        path.unlink()
    summary = make_synthetic_dataset(output_dir, 3, 1, 64, progress=False)
    assert _files(output_dir) == complete
    assert summary.already_there == sum(summary.slices_per_class.values()) - len({path.stem for path in removed})


def test_refuses_a_foreign_or_different_output_dir(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(SDMCError, match="not empty"):
        make_synthetic_dataset(foreign, 3, 0, 64, progress=False)
    assert sorted(path.name for path in foreign.iterdir()) == ["notes.txt"]

    ours = tmp_path / "ours"
    make_synthetic_dataset(ours, 3, 0, 64, progress=False)
    before = _files(ours)
    with pytest.raises(SDMCError, match="--seed 1"):
        make_synthetic_dataset(ours, 3, 1, 64, progress=False)
    assert _files(ours) == before


def test_command_line(tmp_path, capsys):
    output_dir = tmp_path / "cli"
    assert main(["-o", str(output_dir), "--patients", "3", "--seed", "2", "--size", "64"]) == 0
    assert "slices of 3 patients" in capsys.readouterr().out
    assert list(output_dir.glob("Training/Non-Stroke/DICOM/*.dcm"))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.csv").write_text("x")
    assert main(["-o", str(tmp_path / "foreign"), "--size", "64"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
