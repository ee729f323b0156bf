"""Seeds derived from several integers, so each stream of randomness has its own seed."""

from __future__ import annotations

import numpy as np


def mix_seed(*values: int) -> int:
    """One 63-bit seed from several integers (e.g. seed, stream, index), well mixed."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> 1)


def hash_indices(seed: int, indices: np.ndarray) -> np.ndarray:
    """A well-mixed uint64 for each index (splitmix64 of seed and index): a random number
    that depends on (seed, index) alone, computed for many indices at once."""
    with np.errstate(over="ignore"):
        z = indices.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(mix_seed(seed))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
