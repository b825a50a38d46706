"""DICOM SEG of a predicted CT series (highdicom): what PACS viewers and hospital tools load beside
the series, referencing each of its slices.

One segment per lesion class, coded as morphologic abnormalities of the brain (SNOMED CT), made by
an automatic algorithm named after the model. Frames without lesion are left out, as usual for
binary SEG objects.
"""

import logging
import warnings
from pathlib import Path

import numpy as np

from sdmcunet import __version__
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_output

SEG_SUFFIX = "_seg.dcm"
# Segmented property type per class: SNOMED CT morphologic abnormalities (value, scheme, meaning).
PROPERTY_TYPES = {ISCHEMIC: ("55641003", "SCT", "Infarct"), HEMORRHAGIC: ("50960005", "SCT", "Hemorrhage")}
ABNORMAL_STRUCTURE = ("49755003", "SCT", "Morphologically abnormal structure")  # a class of another dataset
SERIES_NUMBER = 900  # a series number of derived objects, away from the scanner's own
# Patient and study attributes a SEG copies from its source: type 2 (present, possibly empty) in CT images,
# but missing from some exports; an empty value is what the standard has for "unknown".
COPIED_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def write_dicom_seg(label_volume: np.ndarray, source_files: tuple[Path, ...], labels: dict[str, int],
                    algorithm: str, path: Path) -> None:
    """Write the (slices, rows, columns) `label_volume` of the series `source_files` (in the same order)
    as a DICOM SEG at `path`, atomically."""
    import highdicom
    import pydicom

    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs each module it copies
    sources = [pydicom.dcmread(file, stop_before_pixels=True) for file in source_files]
    if lacking := [file.name for file, source in zip(source_files, sources) if not source.get("FrameOfReferenceUID")]:
        raise SDMCError(f"{source_files[0].parent}: {len(lacking)} slice(s) of the series have no FrameOfReferenceUID "
                        f"(e.g. {lacking[0]}), which a DICOM SEG must reference; the series cannot get one")
    for source in sources:
        for keyword in COPIED_TYPE_2:
            if keyword not in source:
                setattr(source, keyword, "")
    with warnings.catch_warnings():  # about the source's own PatientName, copied as it is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        segmentation = highdicom.seg.Segmentation(
            source_images=sources, pixel_array=label_volume,  # label values 1..N are the segment numbers
            segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(labels, algorithm),
            series_instance_uid=highdicom.UID(), series_number=SERIES_NUMBER, sop_instance_uid=highdicom.UID(),
            instance_number=1, manufacturer="sdmcunet", manufacturer_model_name=algorithm,
            software_versions=__version__, device_serial_number="0", content_label="STROKE_LESIONS",
            content_description=f"Stroke lesions segmented by {algorithm}"[:64])
    with atomic_output(path) as temporary:
        segmentation.save_as(temporary)


def _segment_descriptions(labels: dict[str, int], algorithm: str) -> list:
    """One segment per lesion class, numbered by its label value (dataset.json labels are 0..N)."""
    import highdicom
    from pydicom.sr.codedict import codes

    identification = highdicom.AlgorithmIdentificationSequence(name=algorithm, version=__version__,
                                                               family=codes.DCM.ArtificialIntelligence)
    return [highdicom.seg.SegmentDescription(
        segment_number=value, segment_label=name,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=highdicom.sr.CodedConcept(*PROPERTY_TYPES.get(value, ABNORMAL_STRUCTURE)),
        algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification, anatomic_regions=[codes.SCT.Brain])
        for name, value in sorted(labels.items(), key=lambda item: item[1]) if value]
