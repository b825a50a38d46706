"""Synthetic axial head CT in Hounsfield units, with stroke lesions and their label map.

A patient is an ellipsoidal head cut by a few consecutive axial slices. Every random choice
comes from a seeded generator, so a slice is a pure function of (seed, patient, slice).

The image is built to make lesion segmentation a learning problem rather than a threshold:
ischemic lesions (10 to 20 HU below the parenchyma, softened edges) overlap white matter, sulci
and noisy grey matter in HU; hemorrhages (25 to 50 HU above it) overlap the falx, choroid
plexus and pineal calcifications, the skull's partial-volume edge and the beam-hardening
brightening under the skull. A smooth inhomogeneity and correlated noise (sigma 4 to 8 HU)
remove any global HU band that would single lesions out.

Geometry lives in a head frame in millimetres: `lateral` (patient left-right) and
`anteroposterior` (negative = anterior = image top), `level` the height above the plane of
the frontal horns.
Positions inside the brain are also given normalised by the brain's semi-axes at that level.
"""

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from sdmcunet.labels import HEMORRHAGIC, ISCHEMIC

MIN_HU = -1024  # the lowest value a CT scanner stores (air plus noise is clipped to it)
AIR_HU, SCALP_HU, FAT_HU, CSF_HU = -1000.0, 40.0, -90.0, 6.0
# Half the brain's height (mm): the cross-section shrinks towards the vertex and the base.
HEAD_HALF_HEIGHT_MM = 70.0
BRAIN_LEVELS_MM = (-40.0, 60.0)  # the slab of levels a patient's slices are drawn from
SULCAL_CORRELATION_MM, TEXTURE_CORRELATION_MM, INHOMOGENEITY_CORRELATION_MM = 6.0, 2.5, 50.0
PSF_SIGMA_PX, NOISE_CORRELATION_PX = 0.6, 0.7
# Lesions stay this far (mm, at least one pixel) from the midline so that lesions of two
# kinds on one slice never touch: the overlay outline colours can then be read back exactly.
MIDLINE_HALF_GAP_MM = 1.5

# Ellipses in normalised brain coordinates: (lateral centre, anteroposterior centre,
# lateral semi-axis, anteroposterior semi-axis, level of largest size in mm). Lateral
# ellipses are mirrored to both hemispheres. Each fades with distance from its level, which
# is what changes the ventricles' shape from slice to slice.
LATERAL_VENTRICLE_PARTS = (
    (0.11, -0.30, 0.08, 0.14, 0.0),   # frontal horn
    (0.15, 0.00, 0.06, 0.24, 18.0),   # body
    (0.22, 0.30, 0.08, 0.13, 4.0),    # atrium and occipital horn
)
THIRD_VENTRICLE = (0.0, -0.02, 0.025, 0.14, -8.0)
DEEP_GREY_NUCLEI = ((0.22, -0.08, 0.09, 0.17, -4.0), (0.09, 0.14, 0.07, 0.10, -4.0))
CHOROID_PLEXUS = (0.22, 0.30, 0.03, 0.04, 4.0)  # calcified, in the atria
PINEAL = (0.0, 0.16, 0.03, 0.03, -4.0)
PART_FADE_MM = 16.0
LOBE_HARMONIC_ORDERS = np.arange(2, 6)  # of a lesion lobe's outline: 2 = oval ... 5 = lobulated


class Stream(IntEnum):
    """Tags that keep the random streams apart. A tag ends every entropy list and is non-zero
    because numpy's SeedSequence ignores trailing zeros ([s, 1] gives the stream of [s, 1, 0])."""

    PATIENT_KINDS = 1
    STEMS = 2
    PATIENT = 3
    FIELDS = 4
    NOISE = 5
    OVERLAY = 6
    ENCODING = 7


def seeded_rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(list(entropy))


@dataclass(frozen=True)
class Lobe:
    """One star-shaped ellipsoid of a lesion, its radius modulated by angular harmonics."""

    offset_mm: tuple[float, float, float]  # lateral, anteroposterior, level from the lesion centre
    radii_mm: tuple[float, float, float]
    angle: float
    amplitudes: np.ndarray  # of the LOBE_HARMONIC_ORDERS of the outline radius
    phases: np.ndarray
    twists: np.ndarray  # phase change per radius in level: the outline evolves between slices


@dataclass(frozen=True)
class Lesion:
    label: int  # ISCHEMIC or HEMORRHAGIC
    side: int  # +1 or -1: the hemisphere the lesion is confined to
    centre_mm: tuple[float, float, float]  # lateral, anteroposterior, level
    lobes: tuple[Lobe, ...]
    contrast_hu: float  # added to the parenchyma at the lesion's core
    edge_softness: float  # depth (fraction of the radius) over which the contrast fades in

    def reach_mm(self) -> float:
        """Radius of a sphere around the centre that holds the whole lesion."""
        return max(np.linalg.norm(lobe.offset_mm) + max(lobe.radii_mm) * (1 + lobe.amplitudes.sum())
                   for lobe in self.lobes)


@dataclass(frozen=True)
class Anatomy:
    """Everything drawn once per patient; see `_draw_anatomy` for the ranges."""

    brain_semi_axes_mm: tuple[float, float]  # lateral, anteroposterior at the widest level
    rotation: float  # radians, head frame to image frame
    centre_offset_mm: tuple[float, float]  # rows, columns from the image centre
    outline_harmonics: np.ndarray  # rows (order, amplitude, phase): irregular inner table
    skull_thickness_mm: float
    thickness_harmonics: np.ndarray
    scalp_mm: float
    diploe_hu: float
    table_hu: float
    white_matter_hu: float
    grey_matter_hu: float
    ventricle_scale: float
    sulcal_width: float  # level-set half width of the sulcal field: grows with atrophy
    csf_rim_mm: float
    falx_hu: float
    calcification_hu: float | None  # choroid plexus and pineal, absent in some patients
    noise_sigma_hu: float
    inhomogeneity_hu: float
    cupping_hu: float
    dense_focus_hu: float | None  # a very dense bone focus in the skull (see synthetic.py)
    dense_focus_angle: float


@dataclass(frozen=True)
class Patient:
    seed: int
    index: int
    shape: tuple[int, int]  # rows, columns
    pixel_spacing_mm: float
    slice_thickness_mm: float
    first_level_mm: float
    n_slices: int
    anatomy: Anatomy
    lesions: tuple[Lesion, ...]

    def level_mm(self, slice_index: int) -> float:
        return self.first_level_mm + slice_index * self.slice_thickness_mm

    def rng(self, stream: Stream, *indices: int) -> np.random.Generator:
        """This patient's generator for `stream` (per slice when `indices` holds the slice)."""
        return seeded_rng(self.seed, self.index, *indices, stream)


@dataclass
class PhantomSlice:
    hounsfield: np.ndarray  # int16, what the scanner stores after rescaling
    label_map: np.ndarray  # uint8, 0 non-stroke, 1 ischemic, 2 hemorrhagic
    brain_mask: np.ndarray  # bool, the intracranial space


def draw_patient(seed: int, index: int, size: int, lesion_labels: tuple[int, ...], dense_focus: bool) -> Patient:
    """Draw patient `index` of dataset `seed` for images `size` pixels high.

    `lesion_labels` lists the lesions to place (ISCHEMIC first, then HEMORRHAGIC); each is
    centred on one of the patient's slices, so each shows on at least that slice.
    """
    rng = seeded_rng(seed, index, Stream.PATIENT)
    # Real scans: 0.40-0.50 mm pixels at 512; smaller images keep the field of view.
    pixel_spacing_mm = rng.uniform(0.40, 0.50) * 512 / size
    width = round(size * rng.uniform(1.05, 1.2)) if rng.random() < 0.2 else size
    slice_thickness_mm = float(rng.choice([2.5, 5.0], p=[0.3, 0.7]))
    n_slices = int(rng.integers(3, 11))
    span_mm = (n_slices - 1) * slice_thickness_mm
    first_level_mm = rng.uniform(BRAIN_LEVELS_MM[0], BRAIN_LEVELS_MM[1] - span_mm)
    anatomy = _draw_anatomy(rng, dense_focus)
    levels = first_level_mm + slice_thickness_mm * rng.integers(0, n_slices, len(lesion_labels))
    ischemic_side = int(rng.choice([-1, 1]))  # the two kinds go to opposite hemispheres
    lesions = tuple(
        _draw_lesion(rng, label, ischemic_side if label == ISCHEMIC else -ischemic_side, level, anatomy)
        for label, level in zip(lesion_labels, levels)
    )
    return Patient(seed, index, (size, width), pixel_spacing_mm, slice_thickness_mm, first_level_mm,
                   n_slices, anatomy, lesions)


def _harmonics(rng: np.random.Generator, orders: range, max_amplitude: float) -> np.ndarray:
    return np.stack([np.array(orders, float), rng.uniform(0, max_amplitude, len(orders)),
                     rng.uniform(0, 2 * np.pi, len(orders))], axis=1)


def _draw_anatomy(rng: np.random.Generator, dense_focus: bool) -> Anatomy:
    white_matter_hu = rng.uniform(26, 30)
    return Anatomy(
        brain_semi_axes_mm=(rng.uniform(56, 64), rng.uniform(70, 80)),
        rotation=np.deg2rad(rng.uniform(-8, 8)),
        centre_offset_mm=(rng.uniform(-4, 4), rng.uniform(-4, 4)),
        outline_harmonics=_harmonics(rng, range(2, 7), 0.012),
        skull_thickness_mm=rng.uniform(5, 8),
        thickness_harmonics=_harmonics(rng, range(1, 5), 0.08),
        scalp_mm=rng.uniform(4, 7),
        diploe_hu=rng.uniform(700, 1000),
        table_hu=rng.uniform(1400, 1800),
        white_matter_hu=white_matter_hu,
        grey_matter_hu=white_matter_hu + rng.uniform(7, 10),
        ventricle_scale=rng.uniform(0.8, 1.4),
        sulcal_width=rng.uniform(0.08, 0.18),
        csf_rim_mm=rng.uniform(0.5, 2.0),
        falx_hu=rng.uniform(55, 85),
        calcification_hu=rng.uniform(120, 400) if rng.random() < 0.6 else None,
        noise_sigma_hu=rng.uniform(4, 8),
        inhomogeneity_hu=rng.uniform(2, 5),
        cupping_hu=rng.uniform(3, 8),
        dense_focus_hu=rng.uniform(2500, 3000) if dense_focus else None,
        dense_focus_angle=rng.uniform(0, 2 * np.pi),
    )


def _draw_lesion(rng: np.random.Generator, label: int, side: int, level_mm: float, anatomy: Anatomy) -> Lesion:
    # Lateral to the ventricles (|lateral| >= 0.45) and inside the cortex (radius <= 0.8):
    # the centre is parenchyma, so the lesion shows on its centre slice.
    scale = _brain_scale(level_mm)
    while True:
        lateral, anteroposterior = rng.uniform(0.45, 0.8), rng.uniform(-0.8, 0.8)
        if np.hypot(lateral, anteroposterior) <= 0.8:
            break
    semi_lateral, semi_ap = (scale * axis for axis in anatomy.brain_semi_axes_mm)
    centre_mm = (side * lateral * semi_lateral, anteroposterior * semi_ap, level_mm)
    # log-uniform sizes: tiny lacunes and petechial bleeds up to territorial infarcts
    radius_mm = np.exp(rng.uniform(np.log(2.5), np.log(30.0 if label == ISCHEMIC else 22.0)))
    lobes = tuple(_draw_lobe(rng, radius_mm, first=n == 0) for n in range(rng.integers(1, 4)))
    if label == ISCHEMIC:
        # established infarcts: clearly hypodense, moderately sharp borders (early ones are subtler)
        return Lesion(label, side, centre_mm, lobes, -rng.uniform(10, 20), edge_softness=0.2)
    return Lesion(HEMORRHAGIC, side, centre_mm, lobes, rng.uniform(25, 50), edge_softness=0.12)


def _draw_lobe(rng: np.random.Generator, radius_mm: float, first: bool) -> Lobe:
    lobe_radius = radius_mm if first else radius_mm * rng.uniform(0.4, 0.8)
    offset = (0.0, 0.0, 0.0) if first else tuple(rng.uniform(-0.7, 0.7, 3) * radius_mm)
    radii = (lobe_radius, lobe_radius * rng.uniform(0.55, 1.0), lobe_radius * rng.uniform(0.5, 1.2))
    n_orders = len(LOBE_HARMONIC_ORDERS)
    return Lobe(offset, radii, rng.uniform(0, np.pi), rng.uniform(0, 0.3, n_orders) / LOBE_HARMONIC_ORDERS,
                rng.uniform(0, 2 * np.pi, n_orders), rng.uniform(-1.5, 1.5, n_orders))


def _brain_scale(level_mm: float) -> float:
    """Size of the brain's cross-section at `level_mm` relative to its widest."""
    return float(np.sqrt(1 - (level_mm / HEAD_HALF_HEIGHT_MM / 1.3) ** 2))


class SmoothField:
    """A unit-variance random field, smooth on `correlation_mm`, over a slab of slices.

    Drawn on a coarse grid (two cells per correlation length) and interpolated, so a slice
    costs one cubic zoom, and neighbouring slices see related patterns.
    """

    def __init__(self, rng: np.random.Generator, extent_mm: tuple[float, float, float], correlation_mm: float):
        cells = [max(4, int(np.ceil(2 * extent / correlation_mm))) for extent in extent_mm]
        volume = ndimage.gaussian_filter(rng.standard_normal(cells), sigma=1.0, mode="wrap")
        self.volume = (volume / volume.std()).astype(np.float32)

    def plane(self, fraction: float, shape: tuple[int, int]) -> np.ndarray:
        """The field at `fraction` (0 to 1) of the slab, at image resolution `shape`."""
        position = fraction * (len(self.volume) - 1)
        below = min(int(position), len(self.volume) - 2)
        weight = position - below
        coarse = (1 - weight) * self.volume[below] + weight * self.volume[below + 1]
        zoom = (shape[0] / coarse.shape[0], shape[1] / coarse.shape[1])
        return ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)


@dataclass
class _Geometry:
    """Head-frame coordinates of every pixel of one slice."""

    lateral: np.ndarray  # mm
    anteroposterior: np.ndarray  # mm
    lateral_n: np.ndarray  # normalised by the brain's semi-axes at this level
    anteroposterior_n: np.ndarray
    angle: np.ndarray  # polar angle in the normalised frame
    depth_mm: np.ndarray  # approximate distance inside the inner table (negative outside)
    mean_radius_mm: float


def _geometry(patient: Patient, level_mm: float) -> _Geometry:
    anatomy, spacing = patient.anatomy, patient.pixel_spacing_mm
    rows, columns = patient.shape
    y = ((np.arange(rows, dtype=np.float32) - rows / 2) * spacing - anatomy.centre_offset_mm[0])[:, None]
    x = ((np.arange(columns, dtype=np.float32) - columns / 2) * spacing - anatomy.centre_offset_mm[1])[None, :]
    cosine, sine = np.float32(np.cos(anatomy.rotation)), np.float32(np.sin(anatomy.rotation))
    lateral, anteroposterior = x * cosine + y * sine, y * cosine - x * sine
    semi_lateral, semi_ap = (_brain_scale(level_mm) * axis for axis in anatomy.brain_semi_axes_mm)
    lateral_n, anteroposterior_n = lateral / semi_lateral, anteroposterior / semi_ap
    angle = np.arctan2(anteroposterior_n, lateral_n)
    radius = np.hypot(lateral_n, anteroposterior_n) / _harmonic_sum(anatomy.outline_harmonics, angle)
    mean_radius_mm = float(np.sqrt(semi_lateral * semi_ap))
    return _Geometry(lateral, anteroposterior, lateral_n, anteroposterior_n, angle,
                     (1 - radius) * mean_radius_mm, mean_radius_mm)


def _harmonic_sum(harmonics: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """1 + sum of amplitude * cos(order * angle + phase) over the rows of `harmonics`."""
    total = np.ones_like(angle)
    for order, amplitude, phase in harmonics:
        total += np.float32(amplitude) * np.cos(np.float32(order) * angle + np.float32(phase))
    return total


def _ellipse_parts(geometry: _Geometry, parts: tuple[tuple[float, ...], ...], level_mm: float, scale: float,
                   mirrored: bool) -> np.ndarray:
    """Union of the ellipses `parts` (see LATERAL_VENTRICLE_PARTS), each faded with level."""
    mask = np.zeros(geometry.lateral_n.shape, dtype=bool)
    for lateral, anteroposterior, semi_lateral, semi_ap, peak_level in parts:
        size = scale * np.exp(-(((level_mm - peak_level) / PART_FADE_MM) ** 2))
        for side in ((-1, 1) if mirrored else (1,)):
            mask |= (((geometry.lateral_n - side * lateral) / (semi_lateral * size)) ** 2
                     + ((geometry.anteroposterior_n - anteroposterior) / (semi_ap * size)) ** 2) < 1
    return mask


def _lesion_core(lesion: Lesion, geometry: _Geometry, level_mm: float, box: tuple[slice, slice]) -> np.ndarray:
    """Depth inside the lesion in the pixels `box`: > 0 inside, 1 at a lobe's centre."""
    depth = np.full(geometry.lateral[box].shape, -np.inf, dtype=np.float32)
    for lobe in lesion.lobes:
        offsets = [centre + offset for centre, offset in zip(lesion.centre_mm, lobe.offset_mm)]
        d_level = (level_mm - offsets[2]) / lobe.radii_mm[2]
        if abs(d_level) >= 1 + lobe.amplitudes.sum():
            continue
        d_lateral, d_ap = geometry.lateral[box] - offsets[0], geometry.anteroposterior[box] - offsets[1]
        cosine, sine = np.cos(lobe.angle), np.sin(lobe.angle)
        along = (d_lateral * cosine + d_ap * sine) / lobe.radii_mm[0]
        across = (d_ap * cosine - d_lateral * sine) / lobe.radii_mm[1]
        phases = lobe.phases + lobe.twists * d_level
        harmonics = np.stack([LOBE_HARMONIC_ORDERS, lobe.amplitudes, phases], axis=1)
        outline = _harmonic_sum(harmonics, np.arctan2(across, along))
        depth = np.maximum(depth, 1 - np.sqrt(along ** 2 + across ** 2 + d_level ** 2) / outline)
    return depth


def _lesion_box(lesion: Lesion, patient: Patient) -> tuple[slice, slice]:
    """Pixel rows and columns that can hold `lesion`."""
    anatomy, spacing = patient.anatomy, patient.pixel_spacing_mm
    lateral, anteroposterior, _ = lesion.centre_mm
    cosine, sine = np.cos(anatomy.rotation), np.sin(anatomy.rotation)
    row = (lateral * sine + anteroposterior * cosine + anatomy.centre_offset_mm[0]) / spacing + patient.shape[0] / 2
    column = (lateral * cosine - anteroposterior * sine + anatomy.centre_offset_mm[1]) / spacing + patient.shape[1] / 2
    reach = lesion.reach_mm() / spacing + 2
    return (slice(max(0, int(row - reach)), int(row + reach) + 1),
            slice(max(0, int(column - reach)), int(column + reach) + 1))


def _lesions(patient: Patient, geometry: _Geometry, level_mm: float, allowed: np.ndarray,
             texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label map and HU change of the patient's lesions on this slice."""
    label_map = np.zeros(allowed.shape, dtype=np.uint8)
    contrast = np.zeros(allowed.shape, dtype=np.float32)
    for lesion in patient.lesions:
        box = _lesion_box(lesion, patient)
        depth = _lesion_core(lesion, geometry, level_mm, box)
        inside = (depth > 0) & allowed[box] & (lesion.side * geometry.lateral[box] > 0)
        # The label follows the edge a reader traces: where the contrast reaches half its full
        # value. The fainter rim, and a cut near a lesion's pole that never reaches half, show
        # in the image unlabelled, as partial-volume tails do in real CT.
        label_map[box][inside & (depth >= lesion.edge_softness / 2)] = lesion.label
        # soft-edged, slightly heterogeneous; where lesions overlap the stronger one shows
        change = lesion.contrast_hu * np.clip(depth / lesion.edge_softness, 0, 1) * (1 + 0.15 * texture[box])
        change = np.where(inside, change, 0)
        contrast[box] = np.where(np.abs(change) > np.abs(contrast[box]), change, contrast[box])
    return label_map, contrast


def render_slice(patient: Patient, slice_index: int) -> PhantomSlice:
    """The HU image, label map and brain mask of slice `slice_index` of `patient`."""
    level_mm = patient.level_mm(slice_index)
    geometry = _geometry(patient, level_mm)
    fields = _fields(patient, slice_index)
    brain_mask = geometry.depth_mm > 0
    ventricle_scale = patient.anatomy.ventricle_scale
    ventricles = brain_mask & (_ellipse_parts(geometry, LATERAL_VENTRICLE_PARTS, level_mm, ventricle_scale, True)
                               | _ellipse_parts(geometry, (THIRD_VENTRICLE,), level_mm, ventricle_scale, False))
    midline = np.abs(geometry.lateral) < max(MIDLINE_HALF_GAP_MM, patient.pixel_spacing_mm)
    label_map, lesion_hu = _lesions(patient, geometry, level_mm, brain_mask & ~ventricles & ~midline, fields.texture)
    brain_hu = _brain(patient.anatomy, geometry, level_mm, fields, ventricles, label_map) + lesion_hu
    ideal = np.where(brain_mask, brain_hu, _extracranial(patient.anatomy, geometry, patient.pixel_spacing_mm))
    hounsfield = _acquire(ideal, patient.anatomy.noise_sigma_hu, patient.rng(Stream.NOISE, slice_index))
    return PhantomSlice(hounsfield, label_map, brain_mask)


@dataclass
class _Fields:
    """Smooth random fields of one slice, each unit-variance at image resolution."""

    sulcal: np.ndarray  # its zero level set traces the sulci
    inhomogeneity: np.ndarray  # slowly varying over the slab
    texture: np.ndarray  # fine, independent per slice


def _fields(patient: Patient, slice_index: int) -> _Fields:
    shape, spacing = patient.shape, patient.pixel_spacing_mm
    slab_rng = patient.rng(Stream.FIELDS)
    slab_mm = (patient.n_slices - 1) * patient.slice_thickness_mm
    extent_mm = (shape[0] * spacing, shape[1] * spacing)
    fraction = slice_index / (patient.n_slices - 1)
    return _Fields(
        sulcal=SmoothField(slab_rng, (slab_mm, *extent_mm), SULCAL_CORRELATION_MM).plane(fraction, shape),
        inhomogeneity=SmoothField(slab_rng, (slab_mm, *extent_mm), INHOMOGENEITY_CORRELATION_MM).plane(fraction, shape),
        texture=SmoothField(patient.rng(Stream.FIELDS, slice_index), (0.0, *extent_mm),
                            TEXTURE_CORRELATION_MM).plane(0.0, shape),
    )


def _brain(anatomy: Anatomy, geometry: _Geometry, level_mm: float, fields: _Fields, ventricles: np.ndarray,
           label_map: np.ndarray) -> np.ndarray:
    """Intracranial HU without lesions (valid inside the brain only)."""
    depth = geometry.depth_mm
    hounsfield = _parenchyma(anatomy, geometry, level_mm, fields)
    # Sulci (a level set of a smooth field, in the cortical band), the CSF rim and the
    # interhemispheric fissure; a lesion replaces the CSF it covers.
    cortical_band = depth < 14 * (1 + 0.3 * fields.inhomogeneity)
    csf = (np.abs(fields.sulcal) < anatomy.sulcal_width) & cortical_band | (depth < anatomy.csf_rim_mm)
    fissure = (np.abs(geometry.lateral) < 2.0) & ((np.abs(geometry.anteroposterior_n) > 0.3) | (level_mm > 32))
    hounsfield[(csf | fissure) & (label_map == 0) | ventricles] = CSF_HU
    hounsfield[fissure & (np.abs(geometry.lateral) < 0.6)] = anatomy.falx_hu
    if anatomy.calcification_hu is not None:
        calcified = _ellipse_parts(geometry, (CHOROID_PLEXUS,), level_mm, 1.0, True)
        calcified |= _ellipse_parts(geometry, (PINEAL,), level_mm, 1.0, False)
        hounsfield[calcified] = anatomy.calcification_hu
    # Low-frequency inhomogeneity and beam hardening that brightens the brain under the skull.
    beam_hardening = anatomy.cupping_hu * np.exp(-np.maximum(depth, 0) / 6)
    return hounsfield + anatomy.inhomogeneity_hu * fields.inhomogeneity + beam_hardening


def _acquire(hounsfield: np.ndarray, noise_sigma_hu: float, rng: np.random.Generator) -> np.ndarray:
    """What the scanner adds: blur, slightly correlated noise, integer storage."""
    blurred = ndimage.gaussian_filter(hounsfield, PSF_SIGMA_PX)
    noise = ndimage.gaussian_filter(rng.standard_normal(hounsfield.shape, dtype=np.float32), NOISE_CORRELATION_PX)
    noisy = blurred + noise * np.float32(noise_sigma_hu / noise.std())
    return np.rint(np.clip(noisy, MIN_HU, None)).astype(np.int16)


def _parenchyma(anatomy: Anatomy, geometry: _Geometry, level_mm: float, fields: _Fields) -> np.ndarray:
    """Grey/white matter HU: cortex along the sulci and under the skull, deep grey nuclei."""
    cortex = np.clip((anatomy.sulcal_width + 0.35 - np.abs(fields.sulcal)) / 0.1, 0, 1) * (geometry.depth_mm < 17)
    cortex = np.maximum(cortex, geometry.depth_mm < 3)
    nuclei = _ellipse_parts(geometry, DEEP_GREY_NUCLEI, level_mm, 1.0, True)
    grey_fraction = np.maximum(cortex, 0.8 * nuclei)
    contrast = anatomy.grey_matter_hu - anatomy.white_matter_hu
    return (anatomy.white_matter_hu + contrast * grey_fraction + 1.5 * fields.texture).astype(np.float32)


def _extracranial(anatomy: Anatomy, geometry: _Geometry, pixel_spacing_mm: float) -> np.ndarray:
    """Skull (dense tables around the diploe), scalp with a fat layer, air outside."""
    outside_mm = -geometry.depth_mm
    thickness = anatomy.skull_thickness_mm * _harmonic_sum(anatomy.thickness_harmonics, geometry.angle)
    across = outside_mm / thickness  # 0 at the inner table, 1 at the outer
    skull_hu = anatomy.diploe_hu + (anatomy.table_hu - anatomy.diploe_hu) * (2 * across - 1) ** 2
    if anatomy.dense_focus_hu is not None:
        radius_mm = max(3.0, 2 * pixel_spacing_mm)
        focus = np.cos(geometry.angle - anatomy.dense_focus_angle) > np.cos(radius_mm / geometry.mean_radius_mm)
        skull_hu = np.where(focus, anatomy.dense_focus_hu, skull_hu)
    scalp = outside_mm - thickness
    scalp_hu = np.where(np.abs(scalp / anatomy.scalp_mm - 0.5) < 0.2, FAT_HU, SCALP_HU)
    return np.select([across < 1, scalp < anatomy.scalp_mm], [skull_hu, scalp_hu], AIR_HU).astype(np.float32)
