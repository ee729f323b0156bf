"""ARC-Easy (Clark et al. 2018): grade-school science questions, 4 answers (a few have 3 or 5);
test split, 2,376 questions; chance 1 / (number of choices), 0.25 for this file.

Read from MosaicML's JSONL (`{"query": "Question: ...", "choices": [...], "gold": i}`). The
context is the harness's `Question: {question}\nAnswer:`, i.e. the query + "\nAnswer:", and
each choice is scored as `" " + choice`.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.eval.tasks.base import TaskContext, TaskResult
from gptlab.eval.tasks.choice import ChoiceExample, check_example, run_choice_task
from gptlab.eval.tasks.files import describe, field, find_file, read_jsonl

NAME = "arc_easy"
FILES = ("arc_easy/arc_easy_test.jsonl",)
HOW = (
    "it is mosaicml/llm-foundry's scripts/eval/local_data/world_knowledge/arc_easy.jsonl "
    "(query/choices/gold JSONL)"
)


def read(path: Path) -> list[ChoiceExample]:
    examples = []
    for line_no, row in read_jsonl(path):
        where = f"{path}:{line_no}"
        query = field(row, "query", str, where)
        choices = tuple(field(row, "choices", list, where))
        gold = field(row, "gold", int, where)
        examples.append(check_example(ChoiceExample(query + "\nAnswer:", choices, gold), where))
    return examples


def run(ctx: TaskContext) -> TaskResult:
    path = find_file(NAME, FILES, ctx.data, HOW)
    return run_choice_task(NAME, read(path), ctx, describe(path))
