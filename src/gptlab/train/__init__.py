"""Training: the run config, the loop, and its checkpoints."""
