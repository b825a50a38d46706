"""Reading a configuration's preprocessed cases: `{case}.npy`, `{case}_seg.npy` and `{case}.json`
(docs/plans.md, "Preprocessed cases"), for training, validation and the report."""

from pathlib import Path

import numpy as np

from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json


class PreprocessedCases:
    """The preprocessed cases of one fold side: arrays loaded lazily, metadata eagerly."""

    def __init__(self, folder: Path, case_ids: list[str]):
        missing = [case for case in case_ids if not (folder / f"{case}.json").is_file()]
        if missing:
            raise SDMCError(f"{folder}: preprocessed case(s) {', '.join(missing[:5])} missing; run sdmc_plan_and_preprocess")
        self.folder = folder
        self.case_ids = list(case_ids)
        self.properties = {case: read_json(folder / f"{case}.json") for case in case_ids}
        # cases holding each lesion class: oversampling draws the class first, so rare classes get their share
        self.cases_with_class: dict[int, list[str]] = {}
        for case in self.case_ids:
            for label in self.properties[case]["class_locations"]:
                self.cases_with_class.setdefault(int(label), []).append(case)

    def image(self, case: str) -> np.ndarray:
        return np.load(self.folder / f"{case}.npy", mmap_mode="r")

    def labels(self, case: str) -> np.ndarray:
        return np.load(self.folder / f"{case}_seg.npy", mmap_mode="r")
