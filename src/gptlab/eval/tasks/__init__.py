"""The benchmarks, one small module each: read the data, build requests, score, reduce.

`run_task(name, ctx)` runs one by name: a benchmark of BENCHMARKS, `val` (the run's own
validation split) or `ppl:PATH` (any text). `parse_tasks("all")` is the four benchmarks and val.
"""

from __future__ import annotations

from collections.abc import Callable

from gptlab.errors import ConfigError, GptlabError
from gptlab.eval.tasks import arc_easy, hellaswag, lambada, perplexity, piqa, val
from gptlab.eval.tasks.base import TaskContext, TaskResult
from gptlab.eval.tasks.files import DataSources, find_file

BENCHMARKS: dict[str, Callable[[TaskContext], TaskResult]] = {
    "hellaswag": hellaswag.run,
    "lambada": lambada.run,
    "arc_easy": arc_easy.run,
    "piqa": piqa.run,
}
_MODULES = {m.NAME: m for m in (hellaswag, lambada, arc_easy, piqa)}  # NAME, FILES, HOW, read
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


def check_data(names: list[str], sources: DataSources) -> None:
    """Find and read every benchmark's file (and check that each ppl:PATH exists) without a
    model: a run that will evaluate them fails before it trains, not at its first eval."""
    for name in names:
        if name in _MODULES:
            module = _MODULES[name]
            module.read(find_file(name, module.FILES, sources, module.HOW))
        elif name.startswith(perplexity.PREFIX):
            location = name.removeprefix(perplexity.PREFIX)
            if not location:
                raise GptlabError("ppl: needs a path to text, e.g. ppl:wikitext2/valid.txt")
            perplexity.resolve_sources(location)  # a GptlabError if it does not exist
