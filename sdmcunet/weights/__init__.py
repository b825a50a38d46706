"""Published pretrained weights for SDMC-Seg: reading CompVis checkpoints without running code,
converting them to diffusers models, and downloading them (docs/design.md §5)."""
