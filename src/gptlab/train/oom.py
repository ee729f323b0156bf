"""Out-of-memory errors turned into one line that names the knobs which lower memory.

Separate from the loop because two places wrap their work in it (a training step and an
evaluation) and because deciding what counts as out of memory is its own small question: CUDA
raises torch.OutOfMemoryError, the CPU allocator a MemoryError or a RuntimeError by message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from gptlab.errors import GptlabError


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )


@contextlib.contextmanager
def explain_oom(where: str, B: int, T: int) -> Iterator[None]:
    """Turn an out-of-memory error (CUDA's or the CPU allocator's) into one line naming the
    knobs that lower memory."""
    try:
        yield
    except Exception as e:
        if not _out_of_memory(e):
            raise
        raise GptlabError(
            f"out of memory in {where} with a micro-batch of {B} sequences x {T} tokens; lower "
            "--train.batch_size (set --train.global_batch_size to keep the batch per step "
            "through more accumulation), turn on --train.activation_checkpointing, or train a "
            "smaller model or --model.seq_len"
        ) from None
