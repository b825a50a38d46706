"""Training: data loading, augmentation, checkpoints, progress, and the trainers."""
