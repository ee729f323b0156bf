"""Optimizers and learning-rate schedules; they see (name, parameter) pairs, never the model."""
