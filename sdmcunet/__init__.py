"""sdmcunet: nnU-Net-style self-configuring stroke lesion segmentation in brain CT."""

__version__ = "0.1.0"
