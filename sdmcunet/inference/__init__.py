"""Inference: predicting label maps (and probabilities) in the original geometry."""
