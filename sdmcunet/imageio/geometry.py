"""Where an image's pixels lie in space: what a label map must copy from the image it segments.

A label map written with only the image's spacing lies elsewhere in a viewer (origin 0, identity
direction) than an image whose origin or direction is not trivial, so readers return an
`ImageGeometry` and writers take one.
"""

from dataclasses import dataclass

IDENTITY_2D = (1.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class ImageGeometry:
    """Spacing, origin and direction exactly as SimpleITK holds them, to be copied, not interpreted.

    SimpleITK orders physical axes x (columns), y (rows) and, for a one-slice 3D volume (as nnU-Net
    writes 2D cases), z; the direction is its cosine matrix row by row. A volume keeps its third
    axis, so that a label map written with its geometry is again a one-slice volume.
    """

    itk_spacing: tuple[float, ...]  # (x, y[, z]) in mm
    origin: tuple[float, ...]  # (x, y[, z]) of the first pixel, in mm
    direction: tuple[float, ...]  # 2x2 or 3x3, row by row

    def __post_init__(self) -> None:
        dimension = len(self.itk_spacing)
        if dimension not in (2, 3) or len(self.origin) != dimension or len(self.direction) != dimension ** 2:
            raise ValueError(f"inconsistent image geometry: spacing {self.itk_spacing}, origin {self.origin}, "
                             f"direction {self.direction}")

    @classmethod
    def from_spacing(cls, spacing: tuple[float, float]) -> "ImageGeometry":
        """The geometry of a slice known only by its (row, column) spacing: origin 0, identity direction."""
        rows, columns = spacing
        return cls((float(columns), float(rows)), (0.0, 0.0), IDENTITY_2D)

    @property
    def spacing(self) -> tuple[float, float]:
        """The in-plane (row, column) spacing, in numpy order like every spacing in sdmcunet."""
        return self.itk_spacing[1], self.itk_spacing[0]

    @property
    def is_volume(self) -> bool:
        """Whether it is the geometry of a one-slice 3D volume."""
        return len(self.itk_spacing) == 3


DEFAULT_GEOMETRY = ImageGeometry.from_spacing((1.0, 1.0))  # files that store none: PNG


def as_geometry(geometry: "ImageGeometry | tuple[float, float]") -> ImageGeometry:
    """A writer's geometry argument: an `ImageGeometry`, or a (row, column) spacing alone."""
    return geometry if isinstance(geometry, ImageGeometry) else ImageGeometry.from_spacing(geometry)


def spacing_of(geometry: ImageGeometry | None) -> tuple[float, float] | None:
    """The (row, column) spacing of a geometry, None for a file that stores none."""
    return None if geometry is None else geometry.spacing
