"""Evaluation: validation loss and bits per byte (loss.py), and benchmarks on one scorer.

    from gptlab.eval import evaluate
    evaluate(model, tokenizer, tasks="hellaswag,lambada", limit=500)  # {"hellaswag/acc": ...}

`evaluate` is imported on first use (PEP 562), so `import gptlab.eval.loss` (the trainer's
val loss) does not load the task modules.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate", "run_tasks"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gptlab.eval import api

        return getattr(api, name)
    raise AttributeError(f"module 'gptlab.eval' has no attribute {name!r}")
