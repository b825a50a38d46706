"""Evaluation of segmentations: the Stroke2021 protocol and nnU-Net-style metrics."""
