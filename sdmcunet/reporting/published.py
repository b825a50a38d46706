"""The published results the report sets beside the measured ones (docs/design.md §5, §6).

Mean Dice over IS and HS (NS excluded) from the SDMC-Seg paper; they are quoted, never measured
here, and the report labels them so.
"""

from dataclasses import dataclass

PUBLISHED_MARK = "published, not measured"


@dataclass(frozen=True)
class PublishedResult:
    trainer: str
    name: str  # as the paper calls the model
    mean_dice: float


# Table 3: the four baselines and the proposed model.
TABLE3 = (
    PublishedResult("UNetTrainer", "U-Net", 0.712),
    PublishedResult("ResUNet34Trainer", "ResUNet", 0.727),
    PublishedResult("SegResNetTrainer", "SegResNet", 0.724),
    PublishedResult("SwinUNETRTrainer", "Swin-UNETR", 0.705),
    PublishedResult("SDMCFinetunedTrainer", "SDMC-Seg", 0.760),
)

# Table 4: the ablation of SDMC-Seg, in the paper's row order.
TABLE4 = (
    PublishedResult("SDMCPretrainedTrainer", "pretrained mask encoder, trainable image encoder", 0.640),
    PublishedResult("SDMCFinetunedFrozenTrainer", "fine-tuned mask encoder, frozen image encoder", 0.539),
    PublishedResult("SDMCFinetunedTrainer", "fine-tuned mask encoder, trainable image encoder (proposed)", 0.760),
)

