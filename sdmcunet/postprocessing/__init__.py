"""Postprocessing of predicted label maps, decided on cross-validation."""
