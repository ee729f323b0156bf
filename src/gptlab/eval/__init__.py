"""Evaluation: losses on held-out data."""
