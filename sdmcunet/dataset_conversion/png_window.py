"""The window the organisers' PNG was exported with, measured from slices that have both files.

The PNG of a slice is an 8-bit windowed export of its DICOM: grey = a * HU + b, rounded and
clipped to 0..255. A model that reads the PNG channel can then segment DICOM-only input if
the PNG is remade from HU with the same window, so the converter measures it: a least-squares
fit of grey on HU over the pixels whose grey is strictly between 0 and 255 (a clipped pixel
says only that its HU lies beyond the window, not where). Each slice keeps its sufficient
statistics in its conversion record, so an interrupted conversion resumes with them, and the
fit pools them over all slices at the end.
"""

import math
from dataclasses import dataclass

import numpy as np

from sdmcunet.utils.errors import SDMCError

MIN_PIXELS = 1000  # fewer unclipped pixels than a few brain slices' worth: no window to trust
# Rounding to whole grey levels alone leaves an RMSE of 0.29; far above it the PNG is not a linear
# window of these HU (another slice, a per-slice window, a non-linear export), and a window fitted
# to it would make a PNG channel unlike any the model saw.
MAX_RMSE_GREY_LEVELS = 5.0


class DegenerateFit(SDMCError):
    """The pooled pixels do not determine a window; the message says why."""


@dataclass
class WindowStatistics:
    """Least-squares sufficient statistics of grey (y) on HU (x) over a slice's unclipped pixels."""

    count: int = 0
    sum_x: float = 0.0
    sum_y: float = 0.0
    sum_xx: float = 0.0
    sum_xy: float = 0.0
    sum_yy: float = 0.0

    @classmethod
    def of_pixels(cls, hounsfield: np.ndarray, grey: np.ndarray) -> "WindowStatistics":
        unclipped = (grey > 0) & (grey < 255)
        x = hounsfield[unclipped].astype(np.float64)
        y = grey[unclipped].astype(np.float64)
        return cls(int(x.size), float(x.sum()), float(y.sum()), float(x @ x), float(x @ y), float(y @ y))

    def __add__(self, other: "WindowStatistics") -> "WindowStatistics":
        return WindowStatistics(self.count + other.count, self.sum_x + other.sum_x, self.sum_y + other.sum_y,
                                self.sum_xx + other.sum_xx, self.sum_xy + other.sum_xy, self.sum_yy + other.sum_yy)


@dataclass(frozen=True)
class WindowFit:
    """The measured window (HU shown black and white) and how well it explains the PNGs."""

    low: float
    high: float
    slices: int
    pixels: int
    rmse_grey_levels: float


def fit_png_window(per_slice: list[WindowStatistics]) -> WindowFit:
    """Pool the slices' statistics and fit grey = a * HU + b; raise DegenerateFit if no window follows."""
    pooled = sum(per_slice, WindowStatistics())
    if pooled.count < MIN_PIXELS:
        raise DegenerateFit(f"only {pooled.count} pixels between black and white in {len(per_slice)} slices "
                            f"(at least {MIN_PIXELS} needed)")
    # Centred sums: the raw ones are large and nearly cancel over millions of pixels.
    n = pooled.count
    s_xx = pooled.sum_xx - pooled.sum_x ** 2 / n
    s_xy = pooled.sum_xy - pooled.sum_x * pooled.sum_y / n
    s_yy = pooled.sum_yy - pooled.sum_y ** 2 / n
    if s_xx <= 0:
        raise DegenerateFit(f"all {n} unclipped pixels have the same HU: the slope of the window is undetermined")
    slope = s_xy / s_xx
    if slope <= 0:
        raise DegenerateFit(f"grey falls as HU rises (slope {slope:.4g} grey levels per HU): the PNGs are not "
                            f"a window of these DICOMs")
    intercept = (pooled.sum_y - slope * pooled.sum_x) / n
    rmse = math.sqrt(max(0.0, s_yy - slope * s_xy) / n)  # residual sum of squares of the fit, from the sums
    if rmse > MAX_RMSE_GREY_LEVELS:
        raise DegenerateFit(f"the best window leaves an RMSE of {rmse:.1f} grey levels (at most "
                            f"{MAX_RMSE_GREY_LEVELS} expected): the PNGs are not one linear window of these DICOMs")
    return WindowFit(-intercept / slope, (255 - intercept) / slope, len(per_slice), n, rmse)
