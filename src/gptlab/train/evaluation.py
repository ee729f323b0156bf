"""Evaluation during training: the loss on fixed train and val batches every `eval_interval` steps.

The batches are drawn once, from the run's seed, so every evaluation of a run (and of every run
with that seed) sees the same windows, and the curves of two runs compare point by point.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gptlab.data.loader import fixed_batches
from gptlab.data.shards import TokenShards
from gptlab.eval.loss import evaluate
from gptlab.runtime import Runtime
from gptlab.train.config import TrainConfig


class PeriodicEval:
    """The fixed eval batches of a run, and the evaluation of a model on them."""

    def __init__(
        self,
        splits: dict[str, TokenShards],
        tc: TrainConfig,
        seq_len: int,
        with_doc_starts: bool,
        token_bytes: torch.Tensor,  # (V,) UTF-8 bytes of each token, for bits per byte
        runtime: Runtime,
    ) -> None:
        self.batches = {  # document starts only for doc_mask models
            split: fixed_batches(
                data, tc.eval_steps, tc.batch_size, seq_len, tc.seed + k, with_doc_starts
            )
            for k, (split, data) in enumerate(splits.items(), start=1)
        }
        self.token_bytes, self.runtime = token_bytes, runtime

    def __call__(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        """{split: {"loss": ..., "bpb": ...}}, the same on every rank."""
        rt = self.runtime
        return {
            split: evaluate(
                model,
                batches,
                rt.device,
                rt.autocast,
                self.token_bytes,
                rank=rt.rank,
                world_size=rt.world_size,
            )
            for split, batches in self.batches.items()
        }
