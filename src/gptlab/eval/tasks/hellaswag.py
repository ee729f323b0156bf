"""HellaSwag (Zellers et al. 2019): pick the most plausible of 4 endings of an activity
description. Validation split, 10,042 examples; chance 0.25.

Two layouts are read:
- the 6-line text layout of llama.cpp's `perplexity --hellaswag` (`hellaswag_val_full.txt`):
  context line (`<activity label>: <context>`), gold label 0-3, then the 4 endings, already
  cleaned much like the harness cleans them. Context = the first line, choices = the endings.
- the original JSONL schema (rowanz/hellaswag: activity_label, ctx_a, ctx_b, endings, label),
  turned into a context and choices exactly as lm-evaluation-harness's `hellaswag/utils.py`
  does: `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`, where
  preprocess strips, turns " [title]" into ". ", drops every "[...]" and collapses double
  spaces.
"""

from __future__ import annotations

import re
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.eval.tasks.base import TaskContext, TaskResult
from gptlab.eval.tasks.choice import ChoiceExample, check_example, run_choice_task
from gptlab.eval.tasks.files import describe, field, find_file, read_jsonl, read_text

NAME = "hellaswag"
FILES = (
    "hellaswag/hellaswag_val.jsonl",  # the original file, when someone supplies it
    "hellaswag/hellaswag_val_full.txt",
    "hellaswag/hellaswag_val_sample1000.jsonl",
)
HOW = (
    "it is rowanz/hellaswag's data/hellaswag_val.jsonl, or the 6-line text layout of "
    "klosax/hellaswag_text_data"
)


def preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag cleanup (WikiHow bracket artifacts)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read(path: Path) -> list[ChoiceExample]:
    if path.suffix == ".txt":
        return _read_text_layout(path)
    examples = []
    for line_no, row in read_jsonl(path):
        where = f"{path}:{line_no}"
        label = row.get("label")
        if isinstance(label, str) and label.isdigit():  # the Hugging Face copy stores text
            row = {**row, "label": int(label)}
        ctx_a, ctx_b = field(row, "ctx_a", str, where), field(row, "ctx_b", str, where)
        context = preprocess(
            field(row, "activity_label", str, where) + ": " + ctx_a + " " + ctx_b.capitalize()
        )
        endings = tuple(preprocess(e) for e in field(row, "endings", list, where))
        gold = field(row, "label", int, where)
        examples.append(check_example(ChoiceExample(context, endings, gold), where))
    return examples


def _read_text_layout(path: Path) -> list[ChoiceExample]:
    lines = read_text(path).split("\n")
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) % 6:
        raise GptlabError(
            f"{path} has {len(lines)} lines, not a multiple of 6 (context, label, 4 endings); "
            "the file is truncated or not in the HellaSwag text layout"
        )
    examples = []
    for start in range(0, len(lines), 6):
        label = lines[start + 1].strip()
        if label not in ("0", "1", "2", "3"):
            raise GptlabError(f"{path}:{start + 2} should be a gold label 0-3, got {label!r:.40}")
        where = f"{path}:{start + 1}"
        example = ChoiceExample(lines[start], tuple(lines[start + 2 : start + 6]), int(label))
        examples.append(check_example(example, where))
    return examples


def run(ctx: TaskContext) -> TaskResult:
    path = find_file(NAME, FILES, ctx.data, HOW)
    return run_choice_task(NAME, read(path), ctx, describe(path))
