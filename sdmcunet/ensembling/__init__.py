"""Ensembling: averaging the probabilities of several models' predictions."""
