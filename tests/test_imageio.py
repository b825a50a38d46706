import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from sdmcunet.imageio import (
    grey_channel, read_dicom_slice, read_nifti, read_png, read_slice, write_image, write_label_map,
)
from sdmcunet.utils.errors import SDMCError

REAL_HEAD_CT = get_testdata_file("693_UNCR.dcm")


def test_real_head_ct_hounsfield_and_spacing_follow_the_header():
    header = pydicom.dcmread(REAL_HEAD_CT)
    dicom = read_dicom_slice(REAL_HEAD_CT)
    stored = np.frombuffer(header.PixelData, dtype="<i2").reshape(header.Rows, header.Columns)
    expected = stored * float(header.RescaleSlope) + float(header.RescaleIntercept)
    np.testing.assert_array_equal(dicom.hounsfield, expected)
    assert dicom.hounsfield.shape == (512, 512)
    # air and padding below -1000 HU, bone above +1000 HU: a plausible head CT
    assert dicom.hounsfield.min() == -3024 and dicom.hounsfield.max() == 1468
    assert np.median(dicom.hounsfield[200:300, 200:300]) == pytest.approx(30, abs=25)  # brain tissue
    assert dicom.spacing == (float(header.PixelSpacing[0]), float(header.PixelSpacing[1])) == (0.478516, 0.478516)
    assert dicom.patient_id == "CQ500-CT-310" and dicom.study_uid == header.StudyInstanceUID
    assert dicom.notes == []


def test_bits_stored_smaller_than_the_values_keeps_the_high_bits(tmp_path):
    header = pydicom.dcmread(REAL_HEAD_CT)
    header.BitsStored, header.HighBit = 12, 11  # the Stroke2021 pitfall: values need 13 bits
    path = tmp_path / "bits12.dcm"
    header.save_as(path)
    dicom = read_dicom_slice(path)
    assert dicom.hounsfield.min() == -3024 and dicom.hounsfield.max() == 1468
    assert any("BitsStored=12" in note for note in dicom.notes)
    # pydicom alone masks to 12 bits and corrupts the values: the reason for the raw reader
    assert pydicom.dcmread(path).pixel_array.max() + header.RescaleIntercept != 1468


def test_compressed_dicom_is_decoded_when_a_decoder_exists():
    dicom = read_dicom_slice(get_testdata_file("MR_small_RLE.dcm"), require_ct=False)  # RLE: pydicom itself
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    np.testing.assert_array_equal(dicom.hounsfield, reference)


def test_compressed_dicom_without_decoder_names_the_package():
    pytest.importorskip("pydicom")
    try:
        import pylibjpeg  # noqa: F401
        pytest.skip("pylibjpeg is installed, the JPEG Lossless file would decode")
    except ImportError:
        pass
    with pytest.raises(SDMCError, match="JPEG Lossless.*pylibjpeg"):
        read_dicom_slice(get_testdata_file("JPEG-LL.dcm"), require_ct=False)


@pytest.mark.parametrize("damage", ["truncated", "not_dicom", "empty"])
def test_broken_dicom_files_give_a_clear_error(tmp_path, damage):
    data = open(REAL_HEAD_CT, "rb").read()
    content = {"truncated": data[: len(data) // 2], "not_dicom": b"hello, not a DICOM file" * 10, "empty": b""}[damage]
    path = tmp_path / f"{damage}.dcm"
    path.write_bytes(content)
    with pytest.raises(SDMCError, match=str(path)):
        read_dicom_slice(path)


def test_dicom_of_another_modality_is_refused():
    with pytest.raises(SDMCError, match="modality is MR"):
        read_dicom_slice(get_testdata_file("MR_small.dcm"))


@pytest.mark.parametrize("mode,dtype,channels", [("L", np.uint8, 0), ("I;16", np.uint16, 0), ("RGB", np.uint8, 3),
                                                 ("RGBA", np.uint8, 4)])
def test_png_modes_and_depths(tmp_path, mode, dtype, channels):
    rng = np.random.default_rng(0)
    shape = (7, 5, channels) if channels else (7, 5)
    array = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    Image.fromarray(array).save(tmp_path / "image.png")
    assert Image.open(tmp_path / "image.png").mode == mode
    loaded = read_png(tmp_path / "image.png")
    assert loaded.dtype == dtype
    np.testing.assert_array_equal(loaded, array)
    np.testing.assert_array_equal(grey_channel(loaded), array if not channels else array[..., 0])


def test_nifti_roundtrip_keeps_values_dtype_and_spacing(tmp_path):
    hounsfield = np.arange(-1000, 1000, 40, dtype=np.int16).reshape(5, 10)
    write_image(hounsfield, tmp_path / "ct.nii.gz", (0.5, 0.25))
    loaded, spacing = read_nifti(tmp_path / "ct.nii.gz")
    assert loaded.dtype == np.int16 and spacing == (0.5, 0.25)
    np.testing.assert_array_equal(loaded, hounsfield)
    assert read_slice(tmp_path / "ct.nii.gz")[1] == (0.5, 0.25)


@pytest.mark.parametrize("name", ["labels.png", "labels.nii.gz"])
def test_label_maps_roundtrip(tmp_path, name):
    label_map = np.zeros((6, 9), dtype=np.int64)
    label_map[1:3, 2:5], label_map[4, 7] = 1, 2
    write_label_map(label_map, tmp_path / name)
    loaded = read_png(tmp_path / name) if name.endswith(".png") else read_nifti(tmp_path / name)[0]
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, label_map)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_unreadable_and_unsupported_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(SDMCError, match="broken.png"):
        read_png(tmp_path / "broken.png")
    with pytest.raises(SDMCError, match="file not found"):
        read_png(tmp_path / "missing.png")
    with pytest.raises(SDMCError, match="unsupported file type"):
        read_slice(tmp_path / "notes.txt")
