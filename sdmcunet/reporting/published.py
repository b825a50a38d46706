"""The published results the report sets beside the measured ones (docs/design.md §5, §6).

Mean Dice over IS and HS (NS excluded) from the SDMC-Seg paper's single split (Table 3, Table 4),
and the same authors' later 5-fold cross-validation (mean ± std over folds, and HD95). Both split
slices, not patients: slices of one patient can lie in training and test, which the patient-grouped
folds measured here never allow. They are quoted, never measured here, and the report labels them so.
"""

from dataclasses import dataclass

PUBLISHED_MARK = "published, not measured"
SLICE_LEVEL_SPLIT = "slice-level split (slices of one patient in training and test)"


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



@dataclass(frozen=True)
class PublishedCrossValidation:
    trainer: str
    name: str  # as the authors call the model
    mean_dice: float  # mean over the 5 folds of the mean Dice over IS and HS
    mean_dice_std: float  # its standard deviation over the folds
    mean_hd95: float  # mm, mean over the folds of the mean HD95 over IS and HS


# The authors' 5-fold cross-validation over slices; nnU-Net's row is its trainer as registered here.
FIVE_FOLD = (
    PublishedCrossValidation("SDMCFinetunedTrainer", "SDMC-Seg", 0.745, 0.019, 13.00),
    PublishedCrossValidation("nnUNetTrainer", "nnU-Net v2 (2d)", 0.718, 0.019, 12.77),
)
