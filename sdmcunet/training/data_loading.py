"""Batches of preprocessed slices for training and validation.

A training batch is a pure function of (seed, batch index, rank): the loader seeds numpy for
the batch it makes, so sampling and augmentation (which batchgenerators draws from numpy's and
Python's global generators in the same process) are the same whichever worker makes the batch, and a run
resumed at iteration k sees exactly the batches an uninterrupted run would have seen.
"""

import random

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from sdmcunet.preprocessing.preprocessed_cases import PreprocessedCases

FOREGROUND_SHARE = 1 / 3  # of each batch, as nnU-Net oversamples foreground


def batch_seed(seed: int, batch_index: int, rank: int) -> np.random.Generator:
    return np.random.default_rng([seed, batch_index, rank])


class TrainingBatches(SlimDataLoaderBase):
    """Endless training batches; a third of each batch shows a lesion, moved towards the centre."""

    def __init__(self, cases: PreprocessedCases, batch_size: int, seed: int, first_batch: int = 0,
                 num_workers: int = 1, rank: int = 0):
        super().__init__(cases, batch_size, num_workers)
        self.seed, self.first_batch, self.rank = seed, first_batch, rank
        self.batches_made = 0

    def generate_train_batch(self) -> dict:
        index = self.first_batch + self.batches_made * self.number_of_threads_in_multithreaded + self.thread_id
        self.batches_made += 1
        rng = batch_seed(self.seed, index, self.rank)
        # batchgenerators' transforms draw from numpy's and Python's global generators in this process
        np.random.seed(int(rng.integers(2**32)))
        random.seed(int(rng.integers(2**32)))
        cases: PreprocessedCases = self._data
        n_foreground = round(self.batch_size * FOREGROUND_SHARE) if cases.cases_with_class else 0
        images, labels, names = [], [], []
        for position in range(self.batch_size):
            if position < n_foreground:
                case, location = self._foreground_pick(rng, cases)
            else:
                case, location = cases.case_ids[rng.integers(len(cases.case_ids))], None
            image, label_map = cases.image(case), cases.labels(case)
            images.append(_recentred(image, location))
            labels.append(_recentred(label_map[None], location))
            names.append(case)
        return {"data": np.stack(images).astype(np.float32), "seg": np.stack(labels).astype(np.float32), "keys": names}

    @staticmethod
    def _foreground_pick(rng: np.random.Generator, cases: PreprocessedCases) -> tuple[str, np.ndarray]:
        label = sorted(cases.cases_with_class)[rng.integers(len(cases.cases_with_class))]
        holders = cases.cases_with_class[label]
        case = holders[rng.integers(len(holders))]
        locations = cases.properties[case]["class_locations"][str(label)]
        return case, np.asarray(locations[rng.integers(len(locations))])


def _recentred(array: np.ndarray, location: np.ndarray | None) -> np.ndarray:
    """Shift the image (at most a quarter of its size) so that `location` moves to the centre.

    The network sees whole slices, so oversampling cannot crop a patch around the lesion as
    nnU-Net does; moving the lesion towards the centre gives the spatial augmentation (zoom,
    rotation) the best chance to keep it in view.
    """
    array = np.asarray(array)
    if location is None:
        return array
    size = np.array(array.shape[-2:])
    shift = np.clip(size // 2 - location, -(size // 4), size // 4)
    shifted = np.zeros_like(array)
    source = [slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, size)]
    target = [slice(max(0, s), n - max(0, -s)) for s, n in zip(shift, size)]
    shifted[(..., *target)] = array[(..., *source)]
    return shifted


def validation_batches(cases: PreprocessedCases, batch_size: int, n_batches: int, start: int = 0):
    """`n_batches` batches of validation cases in a fixed order, without augmentation."""
    order = cases.case_ids
    for batch in range(n_batches):
        picked = [order[(start + batch * batch_size + i) % len(order)] for i in range(batch_size)]
        yield {"data": np.stack([cases.image(c) for c in picked]).astype(np.float32),
               "seg": np.stack([cases.labels(c)[None] for c in picked]).astype(np.float32), "keys": picked}
