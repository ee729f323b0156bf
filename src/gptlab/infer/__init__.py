"""Inference: sampling next tokens and generating text from a trained model."""
