"""Per-epoch training history and the `progress.png` plot."""

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sdmcunet.utils.files import atomic_output


@dataclass
class TrainingHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_dice: list[list[float]] = field(default_factory=list)  # per foreground class
    val_selection: list[float] = field(default_factory=list)  # the plan's selection metric
    learning_rate: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "TrainingHistory":
        return cls(**state)

    def plot(self, path: Path, class_names: list[str], selection_metric: str) -> None:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        from matplotlib import pyplot as plt

        epochs = np.arange(len(self.train_loss))
        figure, (losses, scores, rates) = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
        losses.plot(epochs, self.train_loss, label="train loss")
        losses.plot(epochs, self.val_loss, label="validation loss")
        losses.set_ylabel("loss")
        losses.legend()
        dice = np.asarray(self.val_dice, dtype=float).reshape(len(epochs), -1)
        for column, name in enumerate(class_names):
            scores.plot(epochs, dice[:, column], label=f"validation Dice {name}")
        scores.plot(epochs, self.val_selection, "k--", label=f"validation {selection_metric} (selection)")
        scores.set_ylabel("score")
        scores.set_ylim(0, 1)
        scores.legend()
        rates.plot(epochs, self.learning_rate, color="tab:green", label="learning rate")
        rates.set_ylabel("learning rate")
        seconds = rates.twinx()
        seconds.plot(epochs, self.epoch_seconds, color="tab:gray", label="epoch time")
        seconds.set_ylabel("epoch time (s)")
        rates.set_xlabel("epoch")
        figure.tight_layout()
        with atomic_output(path) as temporary:
            figure.savefig(temporary, dpi=80)
        plt.close(figure)
