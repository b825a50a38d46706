"""A DICOM CT series made from one real slice: the shape of a hospital's export (files without an
extension, named IM0001..., in an order that is not their order in space, one SeriesInstanceUID,
positions along the slice normal), for trying `sdmc_predict` on a series, for tests and for the
volume benchmark. Each slice is the source slice shifted a few pixels, so that slices differ.
"""

import copy
from pathlib import Path

import numpy as np

from sdmcunet.imageio.dicom import read_dataset
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_output

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_series(source: Path, folder: Path, n_slices: int, spacing_mm: float = 5.0,
                 orientation: tuple[float, ...] = AXIAL, modality: str = "CT", frame_of_reference: bool = True,
                 seed: int = 0) -> list[Path]:
    """Write `n_slices` files of one new series into `folder`; returns them in order along the slice normal."""
    from pydicom.uid import generate_uid

    dataset = read_dataset(source)
    if dataset.file_meta.TransferSyntaxUID.is_compressed or int(dataset.BitsAllocated) != 16:
        raise SDMCError(f"{source}: a series is made from an uncompressed 16-bit slice")
    stored = np.frombuffer(dataset.PixelData, dtype=np.int16 if dataset.get("PixelRepresentation") else np.uint16)
    stored = stored[:dataset.Rows * dataset.Columns].reshape(dataset.Rows, dataset.Columns)
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    first = np.array([float(value) for value in dataset.get("ImagePositionPatient", [0.0, 0.0, 0.0])])
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    names = [f"IM{number:04d}" for number in np.random.default_rng(seed).permutation(n_slices) + 1]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, name in enumerate(names):
        slice_dataset = copy.deepcopy(dataset)
        slice_dataset.SOPInstanceUID = slice_dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        slice_dataset.SeriesInstanceUID, slice_dataset.StudyInstanceUID = series, study
        slice_dataset.Modality, slice_dataset.InstanceNumber = modality, index + 1
        if frame_of_reference:
            slice_dataset.FrameOfReferenceUID = frame
        elif "FrameOfReferenceUID" in slice_dataset:
            del slice_dataset.FrameOfReferenceUID
        slice_dataset.ImageOrientationPatient = [f"{value:.6f}" for value in orientation]
        slice_dataset.ImagePositionPatient = [f"{value:.4f}" for value in first + index * spacing_mm * normal]
        slice_dataset.PixelData = np.roll(stored, 4 * index, axis=1).tobytes()
        with atomic_output(folder / name) as temporary:
            slice_dataset.save_as(temporary)
        paths.append(folder / name)
    return paths
