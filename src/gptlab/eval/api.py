"""The task API: `evaluate(model, tokenizer, tasks=..., limit=...)` for the trainer and the
ablation lab (a flat dict of numbers), and `run_tasks` for the CLI (the full report).

Both run each task (eval/tasks/) on a model already on its device, in eval mode (the mode is
restored), under `autocast` (training's compute dtype when called from the trainer). Under
torchrun every rank calls them with its rank and world size: each scores its share of the
examples and every rank returns the same numbers.

The aggregate `score` is the mean over the benchmarks that ran (of hellaswag, lambada,
arc_easy, piqa) of the centered accuracy (acc - chance) / (1 - chance): 0 at chance, 1 when
perfect, so tasks with 2 and 4 choices weigh alike. It is not nanochat's CORE (22 tasks, other
prompts); docs/evaluation.md says what it is for.

Chat mode (`chat_template=`, tasks/chat_choice.py) asks the multiple-choice tasks as lettered
questions in the model's chat template; its results are named `<task>_chat` and averaged the
same way into their own `chat_score` (in the spirit of nanochat's ChatCORE), never into `score`:
the two modes measure different things.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptlab.data.shards import TokenShards
from gptlab.errors import ConfigError
from gptlab.eval.stats import centered
from gptlab.eval.tasks import BENCHMARKS, CHOICE, parse_tasks, run_task
from gptlab.eval.tasks.base import SUBSET_SEED, TaskContext, TaskResult
from gptlab.eval.tasks.chat_choice import chat_name
from gptlab.eval.tasks.files import DataSources
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.chat import ChatTemplate

log = logging.getLogger(__name__)
SCORE_DEFINITION = "mean over the benchmarks run of (acc - chance) / (1 - chance)"
CHAT_SCORE_DEFINITION = (
    "mean over the chat-mode tasks run (lettered multiple choice) of (acc - chance) / (1 - chance)"
)
CHAT_TASKS = tuple(chat_name(t) for t in CHOICE)


@dataclasses.dataclass
class EvalReport:
    """Every task's result, the aggregate score and the settings that produced them."""

    results: list[TaskResult]
    settings: dict[str, Any]

    @property
    def score(self) -> tuple[float, float, list[str]] | None:
        """(score, its standard error, the benchmarks it averages), or None if none ran."""
        return _centered_mean([r for r in self.results if r.name in BENCHMARKS])

    @property
    def chat_score(self) -> tuple[float, float, list[str]] | None:
        """The same average over the chat-mode tasks (`<task>_chat`), or None if none ran."""
        return _centered_mean([r for r in self.results if r.name in CHAT_TASKS])

    def tasks(self) -> dict[str, dict[str, Any]]:
        """{task: {metric: value, metric_stderr: ..., n, chance, cropped, skipped}}."""
        out = {}
        for r in self.results:
            entry: dict[str, Any] = {**r.metrics, "n": r.n}
            if r.chance is not None:
                entry["chance"] = r.chance
            entry |= {"cropped": r.cropped, "skipped": r.skipped}
            out[r.name] = entry
        return out

    def flat(self) -> dict[str, float]:
        """{"hellaswag/acc": ..., "hellaswag/acc_stderr": ..., "hellaswag/n": ..., "score": ...}."""
        out = {f"{task}/{k}": float(v) for task, e in self.tasks().items() for k, v in e.items()}
        if (score := self.score) is not None:
            out["score"], out["score_stderr"] = score[0], score[1]
        if (chat := self.chat_score) is not None:
            out["chat_score"], out["chat_score_stderr"] = chat[0], chat[1]
        return out

    def to_json(self, model: dict[str, Any]) -> dict[str, Any]:
        """The results file: model identity, tasks, score, and every setting."""
        doc: dict[str, Any] = {"model": model, "tasks": self.tasks()}
        if (score := self.score) is not None:
            doc |= {
                "score": score[0],
                "score_stderr": score[1],
                "score_tasks": score[2],
                "score_definition": SCORE_DEFINITION,
            }
        if (chat := self.chat_score) is not None:
            doc |= {
                "chat_score": chat[0],
                "chat_score_stderr": chat[1],
                "chat_score_tasks": chat[2],
                "chat_score_definition": CHAT_SCORE_DEFINITION,
            }
        doc["settings"] = {**self.settings, "tasks": {r.name: r.settings for r in self.results}}
        return doc


def _centered_mean(parts: list[TaskResult]) -> tuple[float, float, list[str]] | None:
    """Mean centered accuracy of `parts`, its standard error (independent tasks), the names."""
    if not parts:
        return None
    k = len(parts)
    value = sum(centered(r.metrics["acc"], r.chance) for r in parts) / k
    var = sum((r.metrics["acc_stderr"] / (1 - r.chance)) ** 2 for r in parts) / k**2
    return value, math.sqrt(var), [r.name for r in parts]


def run_tasks(
    model: nn.Module,
    tokenizer: Tokenizer,
    tasks: str | Sequence[str] = "all",
    *,
    limit: int | None = None,
    num_fewshot: int = 0,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    rank: int = 0,
    world_size: int = 1,
    data_dirs: Sequence[Path] = (),
    data_paths: Mapping[str, Path] | None = None,
    val_split: TokenShards | None = None,
    seed: int = SUBSET_SEED,
    add_bos: bool | None = None,
    stride: int | None = None,
    chat_template: ChatTemplate | None = None,
) -> EvalReport:
    """Run `tasks` ('hellaswag,lambada', a list, or 'all') on `model` and collect the report.

    limit: a seeded subset of at most this many examples per task (windows for val,
    documents for ppl:PATH); data_dirs: data folders to look in, in order (the shared one is
    GPTLAB_DATA_DIR); data_paths:
    {task: file or folder} overrides; val_split: the run's validation tokens, for `val`;
    add_bos: put the tokenizer's BOS before every context (None: when it has one, as
    `gptlab prepare` puts it before every training document); stride: ppl windows' stride
    (default the context length); device: where the model is (checked); chat_template: run
    the multiple-choice tasks in chat mode with it (tasks/chat_choice.py; 'all' is then those
    tasks, and any other task is a ConfigError), reported as `<task>_chat`."""
    names = parse_tasks(tasks, chat=chat_template is not None)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of examples, got {limit}")
    if num_fewshot < 0:
        raise ConfigError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    here, want = model.wte.weight.device, torch.device(device or model.wte.weight.device)
    if want.type != here.type or want.index not in (None, here.index):
        raise ValueError(f"the model is on {here}, not on device {want}")
    use_bos = tokenizer.bos_id is not None if add_bos is None else add_bos
    if use_bos and tokenizer.bos_id is None:
        raise ConfigError("add_bos is set but the tokenizer has no BOS token")
    ctx = TaskContext(
        model=model,
        tokenizer=tokenizer,
        add_bos=use_bos,
        limit=limit,
        seed=seed,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        autocast=autocast,
        rank=rank,
        world_size=world_size,
        data=DataSources(
            data_dirs=tuple(data_dirs),
            paths=dict(data_paths or {}),
        ),
        stride=stride,
        val_split=val_split,
    )
    results = []
    for name in names:
        result = run_task(name, ctx, chat_template)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if "stderr" not in k)
        log.info("%s: %s (n %d)", result.name, shown, result.n)
        results.append(result)
    settings = {
        "limit": limit,
        "seed": seed,
        "num_fewshot": num_fewshot,
        "bos": use_bos,
        "context": model.cfg.seq_len,
        "stride": stride or model.cfg.seq_len,
        "world_size": world_size,
    }
    if chat_template is not None:
        settings["chat_template"] = chat_template.name
    return EvalReport(results, settings)


def evaluate(
    model: nn.Module, tokenizer: Tokenizer, tasks: str | Sequence[str] = "all", **options: Any
) -> dict[str, float]:
    """Flat metrics of `tasks` on `model`, e.g. {"hellaswag/acc": 0.29, "hellaswag/acc_stderr":
    0.0045, "hellaswag/n": 10042.0, ..., "score": 0.07}; `options` are `run_tasks`' keywords
    (limit, batch_size, device, autocast, rank, world_size, data_dirs, chat_template, ...)."""
    return run_tasks(model, tokenizer, tasks, **options).flat()
