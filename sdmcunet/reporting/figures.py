"""The report's pictures as PNG bytes: label maps over CT, image grids and training curves.

Figures are made with matplotlib's object API (Agg rendering, no display, no pyplot state), so
that the report can be made on a server and in parallel with other plotting.
"""

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from sdmcunet.inference.overlays import lesion_overlay, mask_picture
from sdmcunet.labels import CLASS_ABBREVIATIONS, MASK_IMAGE_COLOURS, NON_STROKE
from sdmcunet.results.history import TrainingHistory

PANEL_INCHES = 2.4
DPI = 100


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def overlay(grey: np.ndarray | None, label_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1]: the lesions in their colours over `grey` (uint8), as `sdmc_predict
    --overlays` draws them; without an image, the mask colour image (non-stroke red)."""
    if grey is None:
        return mask_picture(label_map) / 255
    return lesion_overlay(grey, label_map) / 255


def _class_legend(figure: Figure, with_non_stroke: bool) -> None:
    # non-stroke has a colour only in mask pictures; over a CT it is left uncoloured
    handles = [Patch(color=np.asarray(colour) / 255, label=CLASS_ABBREVIATIONS[label])
               for label, colour in sorted(MASK_IMAGE_COLOURS.items()) if label != NON_STROKE or with_non_stroke]
    figure.legend(handles=handles, loc="upper right", ncols=len(handles), frameon=False)


def image_grid(panels: list[list[np.ndarray]], column_titles: list[str], row_titles: list[str],
               panel_notes: list[list[str]] | None = None, mask_pictures: bool = False) -> bytes:
    """A grid of RGB panels: one row per slice, one column per source, with the class legend
    (non-stroke included when the panels are mask pictures rather than overlays)."""
    n_rows, n_columns = len(panels), len(column_titles)
    figure = Figure(figsize=(PANEL_INCHES * n_columns, PANEL_INCHES * n_rows + 0.6))
    axes = figure.subplots(n_rows, n_columns, squeeze=False)
    for row, (row_panels, row_title) in enumerate(zip(panels, row_titles)):
        for column, panel in enumerate(row_panels):
            ax = axes[row, column]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(column_titles[column], fontsize=9)
            if panel_notes is not None:
                ax.set_xlabel(panel_notes[row][column], fontsize=8)
        axes[row, 0].set_ylabel(row_title, fontsize=8)
    _class_legend(figure, mask_pictures)
    return figure_png(figure)


def _mean_validation_dice(history: TrainingHistory) -> np.ndarray:
    """Per epoch, the mean of the per-class validation Dice (the foreground classes IS and HS)."""
    dice = np.asarray(history.val_dice, dtype=float).reshape(len(history.val_dice), -1)
    return dice.mean(axis=1)


def training_curves(groups: dict[str, dict[str, list[tuple[str, TrainingHistory]]]]) -> bytes:
    """One row per group (title -> trainer -> [(fold, history)]): validation Dice and training loss per epoch.

    Each fold is a line in its trainer's colour; the first fold drawn solid, the others lighter.
    """
    figure = Figure(figsize=(12, 4 * len(groups)))
    axes = figure.subplots(len(groups), 2, squeeze=False)
    for (title, trainers), (dice_axes, loss_axes) in zip(groups.items(), axes):
        for index, (trainer, folds) in enumerate(trainers.items()):
            label = f"{trainer} (folds {', '.join(name for name, _ in folds)})"
            for position, (_, history) in enumerate(folds):
                epochs = np.arange(1, len(history.train_loss) + 1)
                first = position == 0
                style = {"color": f"C{index % 10}", "alpha": 1.0 if first else 0.45, "linewidth": 1.6 if first else 1.0,
                         "label": label if first else None}
                dice_axes.plot(epochs, _mean_validation_dice(history), **style)
                loss_axes.plot(epochs, history.train_loss, **style)
        dice_axes.set_title(f"{title}: validation Dice (mean of IS, HS)", fontsize=10)
        dice_axes.set_ylim(0, 1)
        loss_axes.set_title(f"{title}: training loss", fontsize=10)
        loss_axes.set_yscale("log")  # Dice + CE and the diffusion L1 losses differ by orders of magnitude
        for ax in (dice_axes, loss_axes):
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        dice_axes.legend(fontsize=8)
    figure.tight_layout()
    return figure_png(figure)
