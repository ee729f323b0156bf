"""Multiple choice in chat mode: the question is asked in a chat, the model answers a letter.

A chat-finetuned model is meant to be asked, not continued, so each example of a choice task
(HellaSwag, ARC-Easy, PIQA) becomes one user message rendered with the model's chat template,
as nanochat's ChatCORE asks ARC and MMLU:

    Question: Which gas do plants take in?
    A. oxygen
    B. carbon dioxide
    C. helium
    Answer with the letter of the correct choice.

The prompt ends where the assistant's reply starts. One forward over it gives the next-token
logits at its last position; only the letters of the example's choices are compared there, and
the prediction is the argmax letter. A letter is the token the model would write first in a
reply that is just that letter, found by rendering such replies with the template: "A" right
after <|assistant_start|> (special_tokens), " A" after "Assistant:" (plain, BPE tokenizers).
Ids every one-letter reply starts with alike (the space of " A" in a char tokenizer) are added
to the prompt, so the compared position is still where the letters differ. A letter that is not
one token of the tokenizer is an error: its first token would not be the whole answer.

Restricting the answer to the letters makes the task about knowing the answer, not about
following the format: a model that would reply "Sure! ..." is still scored. `letter_mass`, the
probability the model puts on the choices' letters together, says how far it follows the format.
Few-shot shots are earlier user/assistant turns answered with the gold letter. The template
writes its own BOS, so `add_bos` does not apply here. Results are named `<task>_chat`, apart
from the log-likelihood numbers and outside their aggregate score (api.py has `chat_score`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from gptlab.errors import GptlabError
from gptlab.eval.scorer import Request
from gptlab.eval.tasks.base import TaskContext, TaskResult, gather_rows, shard, subset
from gptlab.eval.tasks.choice import (
    ACC,
    ACC_NORM,
    CHANCE,
    COLUMNS,
    PRED,
    VALID,
    ChoiceExample,
    choice_result,
    fewshot_shots,
    logprobs_by_row,
)
from gptlab.tokenizer.chat import ChatTemplate, Message

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
INSTRUCTION = "Answer with the letter of the correct choice."
SUFFIX = "_chat"  # arc_easy in chat mode reports as arc_easy_chat
ANSWER_CUE = "\nAnswer:"  # the log-likelihood prompt's cue (arc_easy, piqa), not a question's
# columns of a result row
# choice.py's table columns; the letters' probability mass takes acc_norm's column
MASS = ACC_NORM


@dataclasses.dataclass(frozen=True)
class LetterTokens:
    """How a one-letter reply starts: ids every such reply begins with (`prefix`: usually none)
    and then the id of each letter, A, B, ..."""

    prefix: tuple[int, ...]
    ids: tuple[int, ...]


def chat_name(task: str) -> str:
    return task + SUFFIX


def user_message(example: ChoiceExample, lead: str = "") -> str:
    """The question (`lead`, then the context without the log-likelihood "Answer:" cue), the
    lettered choices, and the instruction, one per line."""
    if len(example.choices) > len(LETTERS):
        raise GptlabError(
            f"an example has {len(example.choices)} choices; chat mode letters at most "
            f"{len(LETTERS)} (A-Z)"
        )
    question = lead + example.context.removesuffix(ANSWER_CUE).strip()
    lines = [f"{LETTERS[i]}. {choice.strip()}" for i, choice in enumerate(example.choices)]
    return "\n".join([question, *lines, INSTRUCTION])


def conversation(
    examples: list[ChoiceExample], index: int, ctx: TaskContext, lead: str = ""
) -> list[Message]:
    """Example `index` as messages: the few-shot shots as answered turns, then the question."""
    messages = []
    for shot in fewshot_shots(examples, index, ctx):
        messages += [
            Message("user", user_message(shot, lead)),
            Message("assistant", LETTERS[shot.gold]),
        ]
    return [*messages, Message("user", user_message(examples[index], lead))]


def letter_tokens(template: ChatTemplate, n_letters: int) -> LetterTokens:
    """The token of each of the first `n_letters` letters as the model would write it first in
    its reply under `template` (module doc); a GptlabError when a letter is not one token."""
    tokenizer = template.tokenizer
    asked = [Message("user", INSTRUCTION)]  # every prompt ends like this one
    try:
        prompt = template.prompt(asked)
    except ValueError as e:  # a char vocabulary without "U" of "User:" or the instruction's
        raise GptlabError(
            f"this {tokenizer.describe()} cannot encode the {template.name} chat prompt ({e}); "
            "evaluate without --chat"
        ) from None
    tails = []
    for letter in LETTERS[:n_letters]:
        try:
            ids = template.render([*asked, Message("assistant", letter)]).ids
        except ValueError:  # a char vocabulary without this letter
            raise GptlabError(
                f"chat mode needs the letters A-{LETTERS[n_letters - 1]} as tokens, but this "
                f"{tokenizer.describe()} cannot encode {letter!r}; evaluate without --chat"
            ) from None
        if ids[: len(prompt)] != prompt:
            raise GptlabError(
                f"the {template.name} chat template tokenizes the reply {letter!r} together "
                "with the end of the prompt, so no token starts the answer; evaluate without "
                "--chat or pick the other template"
            )
        tails.append(ids[len(prompt) :])
    shared = 0  # ids that every reply starts with
    while all(len(t) > shared + 1 and t[shared] == tails[0][shared] for t in tails):
        shared += 1
    ids = []
    for letter, tail in zip(LETTERS[:n_letters], tails, strict=True):
        first = tail[shared] if len(tail) > shared else None
        if first is None or tokenizer.decode([first]) not in (letter, " " + letter):
            raise GptlabError(
                f"the letter {letter!r} is not one token of this {tokenizer.describe()} under "
                f"the {template.name} chat template (the reply starts with "
                f"{tokenizer.decode(tail[shared : shared + 1])!r}); chat mode compares one "
                "token per letter, so evaluate this model without --chat"
            )
        ids.append(first)
    return LetterTokens(tuple(tails[0][:shared]), tuple(ids))


def run_chat_choice_task(
    name: str,
    examples: list[ChoiceExample],
    ctx: TaskContext,
    template: ChatTemplate,
    settings: dict,
    lead: str = "",
) -> TaskResult:
    """Score a subset of `examples` as lettered questions (module doc): acc, letter_mass and
    their stderrs, under the task name `name` (e.g. arc_easy_chat)."""
    letters = letter_tokens(template, max(len(ex.choices) for ex in examples))
    chosen = subset(len(examples), ctx.limit, ctx.seed)
    mine = shard(ctx, len(chosen))
    requests: list[Request] = []
    owners: list[int] = []  # row among mine of each request
    rows = np.zeros((len(mine), COLUMNS))
    for row, j in enumerate(mine):
        i = int(chosen[j])
        try:
            prompt = template.prompt(conversation(examples, i, ctx, lead))
        except ValueError:  # a character outside a char vocabulary: counted as skipped
            continue
        context = (*prompt, *letters.prefix)
        k = len(examples[i].choices)
        requests += [Request(context, (t,)) for t in letters.ids[:k]]
        owners += [row] * k
        rows[row, VALID] = 1
    # the choices share their context: one prefill per example, then the head at its last
    # position for the k letters (log-softmax there ranks them as their logits do)
    for row, lp in logprobs_by_row(ctx, requests, owners, rows).items():
        ex = examples[int(chosen[mine[row]])]
        pred = int(np.argmax(lp))  # ties go to the earliest letter
        rows[row, ACC], rows[row, PRED] = pred == ex.gold, pred
        rows[row, CHANCE] = 1.0 / len(ex.choices)
        rows[row, MASS] = sum(math.exp(x) for x in lp)
    table = gather_rows(ctx, mine, rows, len(chosen))
    tokenizer = template.tokenizer
    settings = {
        **settings,
        "examples": len(examples),
        "mode": "chat",
        "template": template.name,
        "instruction": INSTRUCTION,
        "reply_prefix": tokenizer.decode(list(letters.prefix)),
        "letter_tokens": {LETTERS[i]: t for i, t in enumerate(letters.ids)},
    }
    return choice_result(
        name, table, chosen, settings, (("acc", ACC), ("letter_mass", MASS)), (("pred", PRED),)
    )
