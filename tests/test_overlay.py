import numpy as np
import pytest
from PIL import Image

from sdmcunet.dataset_conversion.overlay import draw_overlay, inner_boundary, label_map_from_overlay
from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC, NON_STROKE

SAMPLES = [("Hemorrhagic", "90001", HEMORRHAGIC), ("Hemorrhagic", "90004", HEMORRHAGIC), ("Ischemic", "90002", ISCHEMIC)]


def _load(real_samples, folder, stem):
    png = np.array(Image.open(real_samples / folder / "PNG" / f"{stem}.png"))
    overlay = np.array(Image.open(real_samples / folder / "OVERLAY" / f"{stem}.png"))
    return png, overlay


@pytest.mark.parametrize("folder,stem,lesion_class", SAMPLES)
def test_real_overlays_give_the_painted_area_with_the_outline_class(real_samples, folder, stem, lesion_class):
    png, overlay = _load(real_samples, folder, stem)
    # the painted area, measured directly: every pixel the organisers changed
    painted = np.any(png[..., :3] != overlay[..., :3], axis=-1)
    reading = label_map_from_overlay(png, overlay, fallback_class=NON_STROKE)  # no fallback needed
    np.testing.assert_array_equal(reading.label_map > 0, painted)
    assert set(np.unique(reading.label_map)) == {0, lesion_class}
    assert reading.ambiguities == []


def test_real_sample_lesion_sizes(real_samples):
    sizes = {stem: int((label_map_from_overlay(*_load(real_samples, f, stem), NON_STROKE).label_map > 0).sum())
             for f, stem, _ in SAMPLES}
    assert sizes == {"90001": 7287, "90004": 1443, "90002": 2290}


def _two_touching_lesions() -> np.ndarray:
    label_map = np.zeros((64, 64), dtype=np.uint8)
    label_map[10:40, 10:30] = ISCHEMIC
    label_map[10:40, 30:50] = HEMORRHAGIC  # touches the ischemic lesion: one painted region
    label_map[50:60, 5:12] = HEMORRHAGIC
    return label_map


@pytest.mark.parametrize("fill_alpha", [0.5, 0.6, 0.75])
def test_drawn_overlay_reads_back_exactly_also_with_both_kinds_touching(fill_alpha):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(64, 64), dtype=np.uint8)
    label_map = _two_touching_lesions()
    overlay = draw_overlay(grey, label_map, fill_alpha=fill_alpha, rng=rng)
    reading = label_map_from_overlay(np.stack([grey] * 3 + [np.full_like(grey, 255)], -1), overlay, NON_STROKE)
    np.testing.assert_array_equal(reading.label_map, label_map)
    assert reading.n_lesions == 2


def test_lesion_without_outline_colour_takes_the_folder_class_and_is_reported():
    grey = np.full((32, 32), 100, dtype=np.uint8)
    lesion = np.zeros((32, 32), dtype=bool)
    lesion[8:20, 8:20] = True
    overlay = np.stack([grey] * 3, -1).astype(float)
    overlay[lesion] = 0.5 * overlay[lesion] + 0.5 * np.array([255, 0, 0])  # red fill, no outline
    reading = label_map_from_overlay(grey, overlay.round().astype(np.uint8), fallback_class=ISCHEMIC)
    np.testing.assert_array_equal(reading.label_map, lesion * ISCHEMIC)
    assert len(reading.ambiguities) == 1 and "folder's class 1" in reading.ambiguities[0]


def test_overlay_of_another_size_is_refused():
    with pytest.raises(ValueError, match="overlay is"):
        label_map_from_overlay(np.zeros((10, 10), np.uint8), np.zeros((12, 10, 3), np.uint8), ISCHEMIC)


def test_inner_boundary_is_one_pixel_inside():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    boundary = inner_boundary(mask)
    assert boundary.sum() == 16 and not boundary[2:5, 2:5].any()
