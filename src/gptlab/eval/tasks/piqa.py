"""PIQA (Bisk et al. 2020): physical common sense, pick the better of 2 solutions to a goal;
validation split, 1,838 questions; chance 0.5.

Read from the authors' files: `valid.jsonl` (`{"goal", "sol1", "sol2"}`) and, line for line,
`valid-labels.lst` (0 or 1) next to it; a row may instead carry its own `label`. The context is
the harness's `Question: {goal}\nAnswer:`, and each solution is scored as `" " + solution`.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.eval.tasks.base import TaskContext, TaskResult
from gptlab.eval.tasks.choice import ChoiceExample, check_example, run_choice_task
from gptlab.eval.tasks.files import describe, field, find_file, read_jsonl, read_text

NAME = "piqa"
FILES = ("piqa/valid.jsonl",)
HOW = "it is ybisk/ybisk.github.io's piqa/data/valid.jsonl, with valid-labels.lst next to it"


def labels_file(path: Path) -> Path:
    return path.with_name(f"{path.stem}-labels.lst")


def read(path: Path) -> list[ChoiceExample]:
    rows = list(read_jsonl(path))
    labels: list[tuple[int, str]] = []
    if rows and "label" not in rows[0][1]:
        lst = labels_file(path)
        if not lst.is_file():
            raise GptlabError(
                f"{path} has no labels: put {lst.name} (one 0 or 1 per line) next to it"
            )
        labels = [(n, s.strip()) for n, s in enumerate(read_text(lst).splitlines(), 1)]
        labels = [(n, s) for n, s in labels if s]
        if len(labels) != len(rows):
            raise GptlabError(f"{lst} has {len(labels)} labels for the {len(rows)} rows of {path}")
    examples = []
    for k, (line_no, row) in enumerate(rows):
        where = f"{path}:{line_no}"
        if labels:
            n, text = labels[k]
            if text not in ("0", "1"):
                raise GptlabError(f"{labels_file(path)}:{n} should be 0 or 1, got {text!r:.40}")
            row = {**row, "label": int(text)}
        goal = field(row, "goal", str, where)
        choices = (field(row, "sol1", str, where), field(row, "sol2", str, where))
        gold = field(row, "label", int, where)
        example = ChoiceExample(f"Question: {goal}\nAnswer:", choices, gold)
        examples.append(check_example(example, where))
    return examples


def run(ctx: TaskContext) -> TaskResult:
    path = find_file(NAME, FILES, ctx.data, HOW)
    return run_choice_task(NAME, read(path), ctx, describe(path))
