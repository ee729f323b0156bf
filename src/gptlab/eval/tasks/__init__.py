"""The benchmarks, one small module each: read the data, build requests, score, reduce.

`run_task(name, ctx)` runs one by name: a benchmark of BENCHMARKS, `val` (the run's own
validation split) or `ppl:PATH` (any text). `parse_tasks("all")` is the four benchmarks and val.
With a chat template (`run_task(name, ctx, template)`), a multiple-choice task of CHOICE runs
in chat mode instead (chat_choice.py), reported as `<name>_chat`; there "all" means CHOICE.
"""

from __future__ import annotations

from collections.abc import Callable

from gptlab.errors import ConfigError, GptlabError
from gptlab.eval.tasks import arc_easy, chat_choice, hellaswag, lambada, perplexity, piqa, val
from gptlab.eval.tasks.base import TaskContext, TaskResult
from gptlab.eval.tasks.files import DataSources, describe, find_file
from gptlab.tokenizer.chat import ChatTemplate

BENCHMARKS: dict[str, Callable[[TaskContext], TaskResult]] = {
    "hellaswag": hellaswag.run,
    "lambada": lambada.run,
    "arc_easy": arc_easy.run,
    "piqa": piqa.run,
}
_MODULES = {m.NAME: m for m in (hellaswag, lambada, arc_easy, piqa)}  # NAME, FILES, HOW, read
ALL = (*BENCHMARKS, val.NAME)
KNOWN = f"{', '.join(ALL)}, ppl:PATH or all"
CHOICE = (hellaswag.NAME, arc_easy.NAME, piqa.NAME)  # multiple choice: they have a chat mode
# what a chat-mode question starts with, where the context alone does not ask anything
CHAT_LEADS = {hellaswag.NAME: "Which ending continues this text best?\n"}


def parse_tasks(spec: str | list[str] | tuple[str, ...], chat: bool = False) -> list[str]:
    """Task names from 'a,b,c' (or a list); 'all' expands (to CHOICE when `chat`); unknown
    names, and under `chat` tasks that are not multiple choice, are a ConfigError."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        expanded = list(CHOICE if chat else ALL) if part == "all" else [part]
        for name in expanded:
            if name not in ALL and not name.startswith(perplexity.PREFIX):
                raise ConfigError(f"unknown task {name!r}; the tasks are {KNOWN}")
            if chat and name not in CHOICE:
                raise ConfigError(
                    f"{name} has no chat mode: only the multiple-choice tasks "
                    f"({', '.join(CHOICE)}) are asked as lettered questions; run {name} "
                    "without --chat"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise ConfigError(f"no task given; choose from {KNOWN}")
    return names


def run_task(name: str, ctx: TaskContext, template: ChatTemplate | None = None) -> TaskResult:
    """Task `name` on ctx's model; with `template`, a CHOICE task in chat mode."""
    if template is not None:
        if name not in CHOICE:
            raise ConfigError(f"{name} has no chat mode; the tasks with one: {', '.join(CHOICE)}")
        module = _MODULES[name]
        path = find_file(name, module.FILES, ctx.data, module.HOW)
        return chat_choice.run_chat_choice_task(
            chat_choice.chat_name(name),
            module.read(path),
            ctx,
            template,
            describe(path),
            lead=CHAT_LEADS.get(name, ""),
        )
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
