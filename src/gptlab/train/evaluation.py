"""Evaluation during training: the loss on fixed train and val batches every `eval_interval`
steps, and, if asked (`train.eval_tasks`), benchmarks such as HellaSwag on a fixed subset.

The batches and the benchmark subsets are drawn once, from seeds, so every evaluation of a run
(and of every run with that seed) sees the same windows and examples, and the curves of two
runs compare point by point. Under torchrun every rank scores its share and all get the sums.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptlab.data.loader import Batch
from gptlab.eval.api import evaluate as evaluate_tasks
from gptlab.eval.loss import evaluate
from gptlab.eval.tasks import check_data, parse_tasks
from gptlab.eval.tasks.files import DataSources
from gptlab.runtime import Runtime
from gptlab.tokenizer.base import Tokenizer
from gptlab.train.config import TrainConfig

# per-task fields of the flat results that are bookkeeping, not metrics to plot
_NOT_METRICS = ("/n", "/cropped", "/skipped", "/chance")


def check_benchmarks(tc: TrainConfig, data_dir: Path | None) -> None:
    """Find and read the data of the run's eval_tasks before any training (GptlabError)."""
    if tc.eval_tasks:
        check_data(
            parse_tasks(tc.eval_tasks), DataSources(data_dirs=(data_dir,) if data_dir else ())
        )


class PeriodicEval:
    """The fixed eval batches of a run, and the evaluation of a model on them."""

    def __init__(
        self,
        batches: dict[str, list[Batch]],  # the fixed batches of each split (train/inputs.py)
        tc: TrainConfig,
        token_bytes: torch.Tensor,  # (V,) UTF-8 bytes of each token, for bits per byte
        runtime: Runtime,
        tokenizer: Tokenizer | None = None,
        data_dir: Path | None = None,  # where the benchmarks' files are (GPTLAB_DATA_DIR)
    ) -> None:
        self.batches = batches
        self.token_bytes, self.runtime = token_bytes, runtime
        self.tasks, self.tasks_limit = tc.eval_tasks, tc.eval_tasks_limit
        self.tokenizer, self.data_dirs = tokenizer, (data_dir,) if data_dir else ()
        self.batch_size = tc.batch_size

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

    def benchmarks(self, model: nn.Module) -> dict[str, float]:
        """{"eval/hellaswag/acc_norm": ..., "eval/score": ..., "eval_tasks_s": seconds} for the
        run's eval_tasks ({} when none)."""
        if not self.tasks:
            return {}
        rt, t0 = self.runtime, time.perf_counter()
        flat = evaluate_tasks(
            model,
            self.tokenizer,
            self.tasks,
            limit=self.tasks_limit,
            batch_size=self.batch_size,
            device=rt.device,
            autocast=rt.autocast,
            rank=rt.rank,
            world_size=rt.world_size,
            data_dirs=self.data_dirs,
        )
        out = {f"eval/{k}": v for k, v in flat.items() if not k.endswith(_NOT_METRICS)}
        return out | {"eval_tasks_s": time.perf_counter() - t0}
