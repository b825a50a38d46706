"""Fuzzing the readers of untrusted files and the overlay reading with hypothesis.

Contract under test: for any bytes, a reader returns a well-formed result or raises SDMCError
(which the commands turn into a one-line message); any other exception is a bug. The overlay
functions take arrays, not files: they return a label map of the image's shape with values
0..2, or raise ValueError when the two pictures differ in shape, and they give back the label
map an overlay was drawn from.

Budgets are the hypothesis profiles of conftest.py: "ci" (default, derandomised) and "long"
(`pytest --hypothesis-profile=long tests/test_fuzz.py`).
"""

import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from sdmcunet.dataset_conversion.overlay import draw_overlay, label_map_from_overlay
from sdmcunet.imageio import read_dicom_slice, read_nifti, read_png
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC
from sdmcunet.utils.errors import SDMCError

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns about every odd header value it reads


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One file path, rewritten by every example (hypothesis runs them all in one test call)."""
    return tmp_path_factory.mktemp("fuzz") / "input"


def read_or_refuse(reader, path, content: bytes):
    """`reader(path)` on a file holding `content`: its result, or None if it raised SDMCError."""
    path.write_bytes(content)
    try:
        return reader(path)
    except SDMCError as error:
        assert str(path) in str(error), "the message must name the file"
        return None


@st.composite
def mutations(draw, data: bytes, within: int | None = None) -> bytes:
    """`data` with a few bytes overwritten, ranges cut out or inserted, or its tail cut off, all
    in its first `within` bytes (default: anywhere)."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        position = draw(st.integers(0, min(len(data), within or len(data)) - 1))
        kind = draw(st.sampled_from(["overwrite", "delete", "insert", "truncate"]))
        if kind == "overwrite":
            data[position] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[position:position + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[position:]
    return bytes(data)


# ---------------------------------------------------------------- DICOM

def ct_dataset(rows: int = 6, columns: int = 5) -> FileDataset:
    """A small valid CT slice: signed 16-bit, HU = stored - 1024."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("ct.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, "1.2.3.4"
    dataset.Modality, dataset.PatientID, dataset.StudyInstanceUID = "CT", "P1", "1.2.3"
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = rows, columns, 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 1
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    dataset.PixelSpacing = [0.5, 0.5]
    dataset.PixelData = np.arange(rows * columns, dtype="<i2").tobytes()
    return dataset


def dicom_bytes(dataset: FileDataset) -> bytes:
    stream = io.BytesIO()
    with warnings.catch_warnings(), pydicom.config.disable_value_validation():
        warnings.simplefilter("ignore")
        dataset.save_as(stream, enforce_file_format=False)
    return stream.getvalue()


VALID_DICOM = dicom_bytes(ct_dataset())


def check_dicom_result(result) -> None:
    if result is None:
        return
    assert result.hounsfield.dtype == np.float32 and result.hounsfield.ndim == 2 and result.hounsfield.size > 0
    assert np.isfinite(result.hounsfield).all()
    assert result.spacing is None or (len(result.spacing) == 2 and min(result.spacing) > 0)


@given(content=mutations(VALID_DICOM))
def test_dicom_reader_survives_byte_mutations(scratch, content):
    check_dicom_result(read_or_refuse(read_dicom_slice, scratch, content))


REAL_HEAD_CT = Path(get_testdata_file("693_UNCR.dcm")).read_bytes()  # 512 x 512 after a header of 1.7 kB


@given(content=mutations(REAL_HEAD_CT, within=2048))
def test_dicom_reader_survives_mutations_of_a_real_header(scratch, content):
    check_dicom_result(read_or_refuse(read_dicom_slice, scratch, content))


@given(length=st.integers(0, len(VALID_DICOM)))
def test_dicom_reader_survives_truncation(scratch, length):
    check_dicom_result(read_or_refuse(read_dicom_slice, scratch, VALID_DICOM[:length]))


def any_number_text():
    """DS/IS header text: numbers, special floats, garbage."""
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda value: f"{value:.6g}"),
                     st.sampled_from(["", " ", "NaN", "inf", "-inf", "1e309", "abc", "1\\2", "0"]))


@given(rows=st.integers(0, 9), columns=st.integers(0, 9), bits_allocated=st.sampled_from([0, 1, 8, 12, 16, 32, 64]),
       bits_stored=st.integers(0, 40), representation=st.integers(0, 3), slope=any_number_text(),
       intercept=any_number_text(), spacing=st.lists(any_number_text(), max_size=3),
       modality=st.sampled_from(["CT", "MR", "", "ct"]), frames=st.sampled_from([None, "0", "1", "2", "x"]),
       samples=st.integers(0, 4), pixel_bytes=st.integers(0, 200))
def test_dicom_reader_survives_odd_header_values(scratch, rows, columns, bits_allocated, bits_stored, representation,
                                                slope, intercept, spacing, modality, frames, samples, pixel_bytes):
    dataset = ct_dataset()
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = rows, columns, samples
    dataset.BitsAllocated, dataset.BitsStored, dataset.PixelRepresentation = bits_allocated, bits_stored, representation
    dataset.PixelData = bytes(range(256))[:pixel_bytes]
    # Text values go in as raw bytes (VR UN), as a damaged file would hold them; pydicom reads them as DS/CS/IS.
    texts = {"RescaleSlope": slope, "RescaleIntercept": intercept, "Modality": modality,
             "PixelSpacing": "\\".join(spacing), "NumberOfFrames": frames}
    pydicom.config.replace_un_with_known_vr = False  # keep them raw while the test writes them
    try:
        for keyword, text in texts.items():
            if text is not None:
                dataset.add(DataElement(keyword, "UN", text.encode() + b" " * (len(text) % 2)))
        content = dicom_bytes(dataset)
    finally:
        pydicom.config.replace_un_with_known_vr = True
    check_dicom_result(read_or_refuse(read_dicom_slice, scratch, content))


# ---------------------------------------------------------------- PNG

PNG_MODES = {"L": (np.uint8, 0), "I;16": (np.uint16, 0), "RGB": (np.uint8, 3), "RGBA": (np.uint8, 4)}


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    stream = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(stream, format="PNG")
    return stream.getvalue()


VALID_PNG = png_bytes(np.arange(48, dtype=np.uint8).reshape(6, 8))


@given(content=st.binary(max_size=300))
def test_png_reader_survives_random_bytes(scratch, content):
    read_or_refuse(read_png, scratch, content)


@given(content=mutations(VALID_PNG))
def test_png_reader_survives_byte_mutations(scratch, content):
    result = read_or_refuse(read_png, scratch, content)
    assert result is None or result.dtype in (np.uint8, np.uint16)


@given(mode=st.sampled_from(sorted(PNG_MODES)), data=st.data())
def test_png_reader_returns_what_pillow_stored(scratch, mode, data):
    dtype, channels = PNG_MODES[mode]
    shape = (data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))) + ((channels,) if channels else ())
    array = data.draw(hnp.arrays(dtype, shape))
    loaded = read_or_refuse(read_png, scratch, png_bytes(array))
    np.testing.assert_array_equal(loaded, array)


@given(mode=st.sampled_from(["1", "P", "LA", "I", "F"]), array=hnp.arrays(np.uint8, (5, 7)))
def test_png_reader_reads_or_refuses_other_modes(scratch, mode, array):
    """1-bit, palette and grey+alpha PNGs are valid files of kinds the readers do not promise."""
    try:
        content = png_bytes(array, mode)
    except OSError:  # Pillow cannot store 32-bit integer or float PNGs
        return
    result = read_or_refuse(read_png, scratch, content)
    assert result is None or result.shape[:2] == (5, 7)


# ---------------------------------------------------------------- NIfTI

NIFTI_DTYPES = [np.uint8, np.int16, np.uint16, np.float32, np.float64]


def nifti_bytes(array: np.ndarray, compressed: bool) -> bytes:
    """`array` written by SimpleITK as .nii (or its gzip, .nii.gz)."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/image.nii"
        sitk.WriteImage(sitk.GetImageFromArray(array), path, useCompression=False)
        content = open(path, "rb").read()
    return gzip.compress(content) if compressed else content


def nifti_path(scratch, compressed: bool):
    # Not x.nii beside x.nii.gz: ITK would read the one for the other (see test_bad_input.py).
    return scratch.with_name("compressed.nii.gz" if compressed else "plain.nii")


VALID_NIFTIS = [nifti_bytes(np.arange(30, dtype=dtype).reshape(5, 6), compressed=False)
                for dtype in (np.int16, np.float32)]


@given(content=st.sampled_from(VALID_NIFTIS).flatmap(mutations), compressed=st.booleans(),
       gz_name=st.booleans())
def test_nifti_reader_survives_byte_mutations(scratch, content, compressed, gz_name):
    """Compressed or not, named .nii.gz or .nii: ITK goes by the content, not by the name."""
    path = scratch.with_name("mutated_gz.nii.gz" if gz_name else "mutated.nii")
    result = read_or_refuse(read_nifti, path, gzip.compress(content) if compressed else content)
    assert result is None or result[0].ndim == 2


@given(content=st.binary(max_size=400), compressed=st.booleans())
def test_nifti_reader_survives_random_bytes(scratch, content, compressed):
    path = nifti_path(scratch, compressed)
    read_or_refuse(read_nifti, path, gzip.compress(content) if compressed else content)


@given(dtype=st.sampled_from(NIFTI_DTYPES), shape=st.sampled_from([(4, 5), (1, 4, 5), (2, 4, 5), (1, 1, 3)]),
       compressed=st.booleans(), spoiler=st.sampled_from([None, np.nan, np.inf, -np.inf]), data=st.data())
def test_nifti_reader_returns_the_stored_values_or_refuses_non_finite_ones(scratch, dtype, shape, compressed, spoiler,
                                                                          data):
    array = data.draw(hnp.arrays(dtype, shape))
    if spoiler is not None and np.issubdtype(dtype, np.floating):
        array.flat[data.draw(st.integers(0, array.size - 1))] = spoiler
    path = nifti_path(scratch, compressed)
    result = read_or_refuse(read_nifti, path, nifti_bytes(array, compressed))
    if len(shape) == 3 and shape[0] > 1:
        assert result is None  # a volume, not a slice
    elif not np.isfinite(array).all():
        assert result is None  # ITK would have read NaN and infinities as 0
    else:
        np.testing.assert_array_equal(result[0], array.reshape(shape[-2:]))


# ---------------------------------------------------------------- overlays

def pictures(shape: tuple[int, int]):
    """uint8 pictures of `shape` as read_png returns them: grey, RGB or RGBA."""
    return st.sampled_from([(), (3,), (4,)]).flatmap(lambda channels: hnp.arrays(np.uint8, shape + channels))


@given(data=st.data(), fallback=st.sampled_from([ISCHEMIC, HEMORRHAGIC]))
def test_overlay_reading_of_arbitrary_pictures_keeps_its_contract(data, fallback):
    shape = (data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12)))
    png = data.draw(pictures(shape))
    overlay_shape = data.draw(st.sampled_from([shape, (shape[0] + 1, shape[1])]))
    overlay = data.draw(pictures(overlay_shape))
    if overlay_shape != shape:
        with pytest.raises(ValueError, match="overlay is"):
            label_map_from_overlay(png, overlay, fallback)
        return
    reading = label_map_from_overlay(png, overlay, fallback)
    assert reading.label_map.shape == shape and reading.label_map.dtype == np.uint8
    assert set(np.unique(reading.label_map)) <= {0, ISCHEMIC, HEMORRHAGIC}
    assert (reading.n_lesions == 0) == (reading.label_map.max() == 0)


@st.composite
def separate_lesions(draw):
    """A label map of square lesions of either class, two pixels or more apart (never touching)."""
    cell = draw(st.integers(2, 6))
    grid = draw(hnp.arrays(np.uint8, (draw(st.integers(1, 5)), draw(st.integers(1, 5))),
                           elements=st.sampled_from([0, 0, ISCHEMIC, HEMORRHAGIC])))
    label_map = np.kron(grid, np.ones((cell, cell), np.uint8))
    label_map[cell - 1::cell, :] = 0  # the gap between neighbouring cells
    label_map[:, cell - 1::cell] = 0
    return np.pad(label_map, draw(st.integers(0, 2)))


@given(label_map=separate_lesions(), data=st.data(), fill_alpha=st.floats(0.5, 0.75),
       blended_share=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_overlay_reading_gives_back_the_label_map_it_was_drawn_from(label_map, data, fill_alpha, blended_share, seed):
    grey = data.draw(hnp.arrays(np.uint8, label_map.shape))
    overlay = draw_overlay(grey, label_map, fill_alpha, blended_share, np.random.default_rng(seed))
    reading = label_map_from_overlay(grey, overlay, fallback_class=ISCHEMIC)
    np.testing.assert_array_equal(reading.label_map, label_map)
    assert reading.ambiguities == []
