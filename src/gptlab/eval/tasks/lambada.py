"""LAMBADA, OpenAI's variant (Paperno et al. 2016; the GPT-2 paper's test file, the harness's
`lambada_openai`): predict the last word of a passage whose answer needs the whole passage.
Test split, 5,153 passages. Chance is 0: the word is open vocabulary.

Context = the passage without its last space-separated word, continuation = " " + that word
(`text.rsplit(" ", 1)`, the harness's `doc_to_text` / `doc_to_target`). With lp = the summed
log-probability of the continuation's tokens:

    acc  1 if every continuation token is the model's greedy argmax (a word of several tokens
         counts only when all of them are right; the last token alone is not enough)
    ppl  exp(-mean over passages of lp), the harness's `perplexity` aggregation: a perplexity
         per target word, not per token

Few-shot: K other passages, seeded per passage, written whole before it with blank lines.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gptlab.errors import GptlabError
from gptlab.eval.scorer import Request, encode_pair, score_continuations
from gptlab.eval.stats import bootstrap_stderr, mean_stderr
from gptlab.eval.tasks.base import TaskContext, TaskResult, gather_rows, shard, subset
from gptlab.eval.tasks.files import describe, field, find_file, read_jsonl

NAME = "lambada"
FILES = ("lambada/lambada_test.jsonl",)
HOW = 'it is OpenAI\'s gpt-2/data/lambada_test.jsonl, one {"text": ...} per line'
VALID, GREEDY, LOGPROB, CROPPED = range(4)


def read(path: Path) -> list[tuple[str, str]]:
    """(context, target word) of every passage."""
    passages = []
    for line_no, row in read_jsonl(path):
        text = field(row, "text", str, f"{path}:{line_no}")
        if " " not in text.strip():
            raise GptlabError(f"{path}:{line_no} has no space-separated last word to predict")
        context, word = text.rsplit(" ", 1)
        passages.append((context, word))
    return passages


def _fewshot(passages: list[tuple[str, str]], index: int, ctx: TaskContext) -> str:
    k = min(ctx.num_fewshot, len(passages) - 1)
    if k <= 0:
        return ""
    others = np.random.default_rng([ctx.seed, index]).choice(len(passages) - 1, k, replace=False)
    shots = [passages[i + (i >= index)] for i in others]
    return "\n\n".join(f"{c} {w}" for c, w in shots) + "\n\n"


def run(ctx: TaskContext) -> TaskResult:
    path = find_file(NAME, FILES, ctx.data, HOW)
    passages = read(path)
    chosen = subset(len(passages), ctx.limit, ctx.seed)
    mine = shard(ctx, len(chosen))
    rows = np.zeros((len(mine), 4))
    requests: list[Request] = []
    owners: list[int] = []
    for row, j in enumerate(mine):
        i = int(chosen[j])
        context, word = passages[i]
        try:
            request = encode_pair(
                ctx.tokenizer, _fewshot(passages, i, ctx) + context, " " + word, ctx.bos_id
            )
        except ValueError:  # characters outside a char vocabulary: skipped
            continue
        rows[row, VALID] = 1
        requests.append(request)
        owners.append(row)
    scores = score_continuations(
        ctx.model, requests, batch_size=ctx.batch_size, autocast=ctx.autocast,
        world_size=ctx.world_size,
    )  # fmt: skip
    for row, s in zip(owners, scores, strict=True):
        rows[row, [GREEDY, LOGPROB, CROPPED]] = s.is_greedy, s.logprob, s.cropped
    table = gather_rows(ctx, mine, rows, len(chosen))
    valid = table[:, VALID] == 1
    n = int(valid.sum())
    if n == 0:
        raise GptlabError(
            "the model's tokenizer cannot encode any lambada passage (e.g. characters outside "
            "a char vocabulary); evaluate a model with a byte-level tokenizer"
        )
    acc, lp = table[valid, GREEDY], table[valid, LOGPROB]
    pairs = np.stack([lp, np.ones_like(lp)], axis=1)  # bootstrap exp(-sum lp / count)
    metrics = {
        "acc": float(acc.mean()),
        "acc_stderr": mean_stderr(acc),
        "ppl": math.exp(-float(lp.mean())),
        "ppl_stderr": bootstrap_stderr(pairs, lambda s: np.exp(-s[:, 0] / s[:, 1])),
    }
    return TaskResult(
        name=NAME,
        metrics=metrics,
        n=n,
        chance=0.0,
        cropped=int(table[valid, CROPPED].sum()),
        skipped=len(chosen) - n,
        settings={**describe(path), "examples": len(passages)},
        predictions={"index": [int(i) for i in chosen[valid]], "greedy": [int(a) for a in acc]},
    )
