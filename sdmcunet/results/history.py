"""Per-epoch training history, as checkpoints keep it."""

from dataclasses import asdict, dataclass, field


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

    @property
    def epochs(self) -> int:
        return len(self.train_loss)
