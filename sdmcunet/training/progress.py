"""The `progress.png` plot of a training's history."""

from pathlib import Path

import numpy as np

from sdmcunet.results.history import TrainingHistory
from sdmcunet.utils.files import atomic_output


def plot_progress(history: TrainingHistory, path: Path, class_names: list[str], selection_metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot as plt

    epochs = np.arange(len(history.train_loss))
    figure, (losses, scores, rates) = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    losses.plot(epochs, history.train_loss, label="train loss")
    losses.plot(epochs, history.val_loss, label="validation loss")
    losses.set_ylabel("loss")
    losses.legend()
    dice = np.asarray(history.val_dice, dtype=float).reshape(len(epochs), -1)
    for column, name in enumerate(class_names):
        scores.plot(epochs, dice[:, column], label=f"validation Dice {name}")
    scores.plot(epochs, history.val_selection, "k--", label=f"validation {selection_metric} (selection)")
    scores.set_ylabel("score")
    scores.set_ylim(0, 1)
    scores.legend()
    rates.plot(epochs, history.learning_rate, color="tab:green", label="learning rate")
    rates.set_ylabel("learning rate")
    seconds = rates.twinx()
    seconds.plot(epochs, history.epoch_seconds, color="tab:gray", label="epoch time")
    seconds.set_ylabel("epoch time (s)")
    rates.set_xlabel("epoch")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=80)
    plt.close(figure)
