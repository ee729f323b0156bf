"""The GPT model: one class whose variants are picked by ModelConfig."""
