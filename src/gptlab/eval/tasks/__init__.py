"""The benchmarks, one small module each: read the data, build requests, score, reduce.

`run_task(name, ctx)` runs one by name: a benchmark of BENCHMARKS, `val` (the run's own
validation split) or `ppl:PATH` (any text). `parse_tasks("all")` is the four benchmarks and val.
"""

from __future__ import annotations

from collections.abc import Callable

from gptlab.errors import ConfigError
from gptlab.eval.tasks import arc_easy, hellaswag, lambada, perplexity, piqa, val
from gptlab.eval.tasks.base import TaskContext, TaskResult

BENCHMARKS: dict[str, Callable[[TaskContext], TaskResult]] = {
    "hellaswag": hellaswag.run,
    "lambada": lambada.run,
    "arc_easy": arc_easy.run,
    "piqa": piqa.run,
}
ALL = (*BENCHMARKS, val.NAME)
KNOWN = f"{', '.join(ALL)}, ppl:PATH or all"


def parse_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Task names from 'a,b,c' (or a list); 'all' expands; unknown names are a ConfigError."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        expanded = list(ALL) if part == "all" else [part]
        for name in expanded:
            if name not in ALL and not name.startswith(perplexity.PREFIX):
                raise ConfigError(f"unknown task {name!r}; the tasks are {KNOWN}")
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError(f"no task given; choose from {KNOWN}")
    return names


def run_task(name: str, ctx: TaskContext) -> TaskResult:
    if name.startswith(perplexity.PREFIX):
        return perplexity.run(ctx, name)
    if name == val.NAME:
        return val.run(ctx)
    return BENCHMARKS[name](ctx)
