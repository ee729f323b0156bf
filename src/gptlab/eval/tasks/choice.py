"""Multiple choice, scored as lm-evaluation-harness scores it (HellaSwag, ARC-Easy, PIQA).

Each choice is the continuation `" " + choice` of the example's context. With
ll_i = sum of the log-probabilities of choice i's tokens:

    acc       1 if argmax_i ll_i is the gold choice
    acc_norm  1 if argmax_i ll_i / len(choice_i) is the gold choice, len in characters of the
              choice text without the leading space (the harness's `completion_len`)

Other codebases normalise by tokens (a tokenizer-dependent number) or by UTF-8 bytes, and get
other numbers; docs/evaluation.md compares them. Ties go to the lowest index (numpy argmax).
Every choice of an example shares its context, so the scorer runs the context once.

Few-shot (`num_fewshot` K > 0): K other examples of the same file, drawn for each example from
a generator seeded with (seed, example index), are written before it as
`context + " " + gold choice`, separated by blank lines (the harness's default delimiters).
The harness draws HellaSwag, ARC and PIQA shots from their train splits, which the shared
data folder does not hold, so few-shot numbers are not directly comparable with published ones.

Chat mode (chat_choice.py) asks the same examples as lettered questions in a chat template.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gptlab.errors import GptlabError
from gptlab.eval.scorer import Request, encode_pair, score_continuations
from gptlab.eval.stats import mean_stderr
from gptlab.eval.tasks.base import TaskContext, TaskResult, gather_rows, shard, subset

FEWSHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = " "
# columns of a result row
VALID, ACC, ACC_NORM, PRED, PRED_NORM, CROPPED, CHANCE = range(7)
COLUMNS = 7


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
    context: str
    choices: tuple[str, ...]
    gold: int


def check_example(example: ChoiceExample, where: str) -> ChoiceExample:
    if len(example.choices) < 2:
        raise GptlabError(f"{where} has {len(example.choices)} choice(s); it needs at least 2")
    if not 0 <= example.gold < len(example.choices):
        raise GptlabError(
            f"{where} has gold answer {example.gold}, outside its {len(example.choices)} choices"
        )
    return example


def fewshot_shots(
    examples: list[ChoiceExample], index: int, ctx: TaskContext
) -> list[ChoiceExample]:
    """The K solved examples written before example `index` (never itself; [] for K = 0),
    drawn by a generator seeded with (seed, index): the same shots in every mode."""
    k = min(ctx.num_fewshot, len(examples) - 1)
    if k <= 0:
        return []
    others = np.random.default_rng([ctx.seed, index]).choice(len(examples) - 1, k, replace=False)
    return [examples[i + (i >= index)] for i in others]  # skip the example itself


def fewshot_prefix(examples: list[ChoiceExample], index: int, ctx: TaskContext) -> str:
    """K solved examples other than `index`, each followed by a blank line ('' for K = 0)."""
    shots = fewshot_shots(examples, index, ctx)
    if not shots:
        return ""
    solved = [s.context + TARGET_DELIMITER + s.choices[s.gold] for s in shots]
    return FEWSHOT_DELIMITER.join(solved) + FEWSHOT_DELIMITER


def run_choice_task(
    name: str, examples: list[ChoiceExample], ctx: TaskContext, settings: dict
) -> TaskResult:
    """Score a subset of `examples` on the model of `ctx`: acc, acc_norm and their stderrs."""
    chosen = subset(len(examples), ctx.limit, ctx.seed)
    mine = shard(ctx, len(chosen))
    requests: list[Request] = []
    owners: list[int] = []  # row among mine of each request (its choices in order)
    rows = np.zeros((len(mine), COLUMNS))
    for row, j in enumerate(mine):
        i = int(chosen[j])
        ex = examples[i]
        context = fewshot_prefix(examples, i, ctx) + ex.context
        try:
            pairs = [
                encode_pair(ctx.tokenizer, context, TARGET_DELIMITER + c, ctx.bos_id)
                for c in ex.choices
            ]
        except ValueError:  # e.g. a character outside a char vocabulary: counted as skipped
            continue
        rows[row, VALID] = 1
        requests += pairs
        owners += [row] * len(ex.choices)
    for row, ll in logprobs_by_row(ctx, requests, owners, rows).items():
        ex = examples[int(chosen[mine[row]])]
        chars = np.array([float(len(c)) for c in ex.choices])
        pred, pred_norm = int(np.argmax(ll)), int(np.argmax(np.array(ll) / chars))
        rows[row, ACC], rows[row, ACC_NORM] = pred == ex.gold, pred_norm == ex.gold
        rows[row, PRED], rows[row, PRED_NORM] = pred, pred_norm
        rows[row, CHANCE] = 1.0 / len(ex.choices)
    table = gather_rows(ctx, mine, rows, len(chosen))
    return choice_result(name, table, chosen, {**settings, "examples": len(examples)})


def logprobs_by_row(
    ctx: TaskContext, requests: list[Request], owners: list[int], rows: np.ndarray
) -> dict[int, list[float]]:
    """Score every request; each row's log-probabilities in request order. A row's CROPPED
    column is set when any of its requests was cut to fit the context."""
    scores = score_continuations(
        ctx.model,
        requests,
        batch_size=ctx.batch_size,
        autocast=ctx.autocast,
        world_size=ctx.world_size,
    )
    by_row: dict[int, list[float]] = {}
    for row, s in zip(owners, scores, strict=True):
        by_row.setdefault(row, []).append(s.logprob)
        rows[row, CROPPED] = max(rows[row, CROPPED], float(s.cropped))
    return by_row


def choice_result(
    name: str,
    table: np.ndarray,
    chosen: np.ndarray,
    settings: dict,
    metrics_of: tuple[tuple[str, int], ...] = (("acc", ACC), ("acc_norm", ACC_NORM)),
    preds_of: tuple[tuple[str, int], ...] = (("pred", PRED), ("pred_norm", PRED_NORM)),
) -> TaskResult:
    """The TaskResult of a multiple-choice table (columns above): the mean and standard error
    of each `metrics_of` column over the examples that could be encoded, and the predictions
    of each `preds_of` column."""
    valid = table[:, VALID] == 1
    n = int(valid.sum())
    if n == 0:
        raise GptlabError(
            f"the model's tokenizer cannot encode any {name} example (e.g. characters outside "
            "a char vocabulary); evaluate a model with a byte-level tokenizer"
        )
    metrics = {}
    for metric, col in metrics_of:
        metrics[metric] = float(table[valid, col].mean())
        metrics[f"{metric}_stderr"] = mean_stderr(table[valid, col])
    return TaskResult(
        name=name,
        metrics=metrics,
        n=n,
        chance=float(table[valid, CHANCE].mean()),
        cropped=int(table[valid, CROPPED].sum()),
        skipped=len(chosen) - n,
        settings=settings,
        predictions={
            "index": [int(i) for i in chosen[valid]],
            **{key: [int(p) for p in table[valid, col]] for key, col in preds_of},
        },
    )
