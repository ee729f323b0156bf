"""Random-window batches from a token memmap: (x, y) of shape (B, T), y = x shifted by one.

Each batch picks B random start offsets with a seeded torch.Generator, so the stream of batches
is fixed by the seed and resumable from the generator state. Only the B windows are read from
the memmap; the file is never loaded into RAM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class RandomWindowLoader:
    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int) -> None:
        if len(tokens) < seq_len + 1:
            raise ValueError(
                f"only {len(tokens)} tokens, fewer than one training window of seq_len + 1 = "
                f"{seq_len + 1}; use more text or a smaller --model.seq_len"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = np.arange(seq_len + 1)  # (T+1,)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) pair, int64 on CPU: x (B, T), y (B, T)."""
        n_starts = len(self.tokens) - self.seq_len
        starts = torch.randint(n_starts, (self.batch_size,), generator=self.generator).numpy()
        windows = self.tokens[starts[:, None] + self._offsets].astype(np.int64)  # (B, T+1)
        w = torch.from_numpy(windows)
        return w[:, :-1], w[:, 1:]  # (B, T), (B, T)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def fixed_batches(
    tokens: np.ndarray, n_batches: int, batch_size: int, seq_len: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of batches (same every call for a seed): evaluation sees the same data."""
    loader = RandomWindowLoader(tokens, batch_size, seq_len, seed)
    return [loader.next_batch() for _ in range(n_batches)]
