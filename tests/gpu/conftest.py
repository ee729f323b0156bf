"""What the CUDA tests share: the device, and strict fp32 matmuls for reference runs.

Every test under tests/gpu is marked `gpu` (each module's `pytestmark`), so tests/conftest.py
skips it where torch sees no CUDA device; `pytest -m gpu tests/gpu` runs them on a GPU machine.
"""

from __future__ import annotations

import pytest
import torch

Batch = tuple[torch.Tensor, torch.Tensor, None]


def pattern_batches(n: int, B: int, T: int, vocab_size: int, seed: int = 0) -> list[Batch]:
    """n (x, y, None) batches of B x T tokens (on the CPU) that follow a fixed random
    permutation of the vocabulary, token to next token, from a random first token: a pattern a
    few steps start to learn, so losses fall and comparing two runs is not comparing noise."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(1234))  # (V,)
    out = []
    for _ in range(n):
        x = torch.empty(B, T + 1, dtype=torch.long)  # (B, T + 1)
        x[:, 0] = torch.randint(vocab_size, (B,), generator=g)
        for t in range(T):
            x[:, t + 1] = perm[x[:, t]]
        out.append((x[:, :-1], x[:, 1:], None))  # (B, T) each
    return out


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda", 0)


@pytest.fixture
def strict_fp32():
    """fp32 matmuls in full fp32 (no TF32) for the test, so an fp32 run is a clean reference;
    the process-wide flags that gptlab's runtime sets are restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn
