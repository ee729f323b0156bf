"""Chat mode for the multiple-choice tasks (eval/tasks/chat_choice.py): the rendered question,
the letters' tokens under each template, argmax-letter scoring on models whose logits are set
by hand (so accuracy is known exactly), and `gptlab eval --chat` on tiny saved runs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from tests.eval.conftest import BigramLM

from gptlab import checkpoint
from gptlab.cli import main as cli_main
from gptlab.config import to_dict
from gptlab.data.config import SFTConfig
from gptlab.errors import ConfigError, GptlabError
from gptlab.eval.api import run_tasks
from gptlab.eval.tasks import CHOICE, arc_easy, hellaswag, parse_tasks
from gptlab.eval.tasks.base import TaskContext, subset
from gptlab.eval.tasks.chat_choice import (
    INSTRUCTION,
    conversation,
    letter_tokens,
    user_message,
)
from gptlab.eval.tasks.choice import ChoiceExample
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.chat import Message, chat_template
from gptlab.tokenizer.load import resolve_tokenizer
from gptlab.tokenizer.patterns import get_pattern
from gptlab.tokenizer.train import BOS, DEFAULT_SPECIAL_TOKENS, EOS
from gptlab.train.config import RunConfig

SHARED = os.environ.get("GPTLAB_DATA_DIR")
ARC_FILE = Path(SHARED or "/nonexistent") / arc_easy.FILES[0]
EXAMPLE = ChoiceExample("Question: what is up?\nAnswer:", ("sky", "sea", "mud"), 0)
QUESTION = "Question: what is up?\nA. sky\nB. sea\nC. mud\n" + INSTRUCTION


def chat_bpe(merges: dict[bytes, int] | None = None) -> BPETokenizer:
    """Byte-level BPE (one id per byte, plus `merges`) with gptlab's reserved special tokens."""
    ranks = {bytes([i]): i for i in range(256)} | (merges or {})
    special = {t: len(ranks) + k for k, t in enumerate(DEFAULT_SPECIAL_TOKENS)}
    return BPETokenizer(ranks, get_pattern("gpt2"), special, name="chatbytes", bos=BOS, eos=EOS)


def bare_ctx(tokenizer, **options) -> TaskContext:
    """A context for building prompts only (no model)."""
    no_model = None  # prompts need no model
    return TaskContext(model=no_model, tokenizer=tokenizer, add_bos=True, **options)  # type: ignore


# -- the question ----------------------------------------------------------------------------


def test_user_message_letters_the_choices_and_ends_with_the_instruction():
    assert user_message(EXAMPLE) == QUESTION
    lead = "Which ending continues this text best?\n"
    ending = ChoiceExample("cooking: a man cuts a", ("bed.", "fish."), 1)
    assert user_message(ending, lead) == f"{lead}cooking: a man cuts a\nA. bed.\nB. fish.\n" + (
        INSTRUCTION
    )


def test_special_tokens_prompt_is_the_question_between_chat_tokens():
    tok = chat_bpe()
    template = chat_template(tok, "special_tokens")
    ctx = bare_ctx(tok)
    prompt = template.prompt(conversation([EXAMPLE], 0, ctx))
    s = tok.special_tokens
    assert prompt == [
        s[BOS],
        s["<|user_start|>"],
        *tok.encode_ordinary(QUESTION),
        s["<|user_end|>"],
        s["<|assistant_start|>"],
    ]


def test_plain_prompt_is_a_transcript_ending_at_assistant():
    tok = CharTokenizer(sorted(set(QUESTION + "UserAsitn: \n")))
    prompt = chat_template(tok, "plain").prompt([Message("user", user_message(EXAMPLE))])
    assert tok.decode(prompt) == f"User: {QUESTION}\nAssistant:"


def test_fewshot_shots_are_answered_turns():
    examples = [EXAMPLE, ChoiceExample("Question: what is wet?\nAnswer:", ("sun", "sea"), 1)]
    ctx = bare_ctx(chat_bpe(), num_fewshot=1)
    messages = conversation(examples, 0, ctx)
    assert [m.role for m in messages] == ["user", "assistant", "user"]
    assert messages[1].content == "B"  # the shot's gold letter
    assert messages[2].content == QUESTION


# -- the letters' tokens ---------------------------------------------------------------------


def test_special_tokens_letters_are_the_bare_letters():
    tok = chat_bpe()
    letters = letter_tokens(chat_template(tok, "special_tokens"), 5)
    assert letters.prefix == ()
    assert list(letters.ids) == [tok.encode_ordinary(c)[0] for c in "ABCDE"]


@pytest.mark.skipif(
    not (Path(SHARED or "/nonexistent") / "gpt2_tokenizer").is_dir(),
    reason="set GPTLAB_DATA_DIR",
)
def test_plain_gpt2_letters_are_space_letters():
    tok = resolve_tokenizer("gpt2", data_dir=Path(SHARED))
    letters = letter_tokens(chat_template(tok, "plain"), 4)
    assert letters.prefix == ()
    assert list(letters.ids) == [tok.encode_ordinary(" " + c)[0] for c in "ABCD"]
    assert len(set(letters.ids)) == 4


def test_plain_char_letters_come_after_a_shared_space():
    tok = CharTokenizer(sorted(set(f"ABCD User: {INSTRUCTION}\nAssistant:")))
    letters = letter_tokens(chat_template(tok, "plain"), 4)
    assert letters.prefix == (tok.stoi[" "],)
    assert list(letters.ids) == [tok.stoi[c] for c in "ABCD"]


def test_a_letter_missing_from_a_char_vocabulary_is_one_clear_error(char_tok):
    tok = CharTokenizer(sorted(set(f"AC User: {INSTRUCTION}\nAssistant:")))
    with pytest.raises(GptlabError, match=r"letters A-C as tokens.*cannot encode 'B'"):
        letter_tokens(chat_template(tok, "plain"), 3)
    with pytest.raises(GptlabError, match=r"cannot encode the plain chat prompt"):
        letter_tokens(chat_template(char_tok, "plain"), 3)  # no "U" for "User:"


def test_a_letter_that_is_not_one_token_is_one_clear_error():
    tok = chat_bpe({b" A": 256})  # " A" merges into one token, " B" stays a space and a B
    with pytest.raises(GptlabError, match=r"letter 'B' is not one token"):
        letter_tokens(chat_template(tok, "plain"), 2)
    assert letter_tokens(chat_template(tok, "special_tokens"), 2).prefix == ()  # "A", "B" alone


# -- scoring ---------------------------------------------------------------------------------


class PromptLookupLM(BigramLM):
    """Logits 0 everywhere but +5 on `favored[prompt]` at a prompt's last position: the
    letter each question gets is set by hand, and every log-probability is known."""

    def __init__(self, vocab_size: int, favored: dict[tuple[int, ...], int], seq_len: int = 512):
        super().__init__(torch.zeros(vocab_size, vocab_size), seq_len)
        self.favored = favored

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*idx.shape, self.cfg.vocab_size)  # (B, T, V)
        for b, row in enumerate(idx.tolist()):
            for prompt, token in self.favored.items():
                if tuple(row[: len(prompt)]) == prompt:
                    logits[b, len(prompt) - 1, token] = 5.0
        return logits


def test_scoring_picks_the_argmax_letter(data_dir):
    tok = chat_bpe()
    template = chat_template(tok, "special_tokens")
    examples = hellaswag.read(data_dir / "hellaswag" / "hellaswag_val_full.txt")
    assert [ex.gold for ex in examples] == [1, 0, 2]
    wanted = [1, 2, 2]  # right, wrong, right: acc 2/3
    ctx = bare_ctx(tok)
    letter_ids = letter_tokens(template, 4).ids
    favored = {
        tuple(template.prompt(conversation(examples, i, ctx, "Which ending continues this "
                                           "text best?\n"))): letter_ids[w]
        for i, w in enumerate(wanted)
    }  # fmt: skip
    model = PromptLookupLM(tok.vocab_size, favored)
    report = run_tasks(model, tok, "hellaswag", data_dirs=[data_dir], chat_template=template)
    (result,) = report.results
    assert result.name == "hellaswag_chat" and result.n == 3 and result.chance == 0.25
    assert result.metrics["acc"] == pytest.approx(2 / 3)
    assert result.predictions["pred"] == wanted
    V = tok.vocab_size
    mass = (math.exp(5) + 3) / (math.exp(5) + V - 1)  # four letters, one of them favored
    assert result.metrics["letter_mass"] == pytest.approx(mass, rel=1e-6)
    assert result.settings["mode"] == "chat" and result.settings["template"] == "special_tokens"
    flat = report.flat()
    assert flat["hellaswag_chat/acc"] == pytest.approx(2 / 3)
    assert flat["chat_score"] == pytest.approx((2 / 3 - 0.25) / 0.75)
    assert "score" not in flat  # the log-likelihood aggregate stays apart


def test_chat_mode_runs_only_the_multiple_choice_tasks():
    assert parse_tasks("all", chat=True) == list(CHOICE)
    with pytest.raises(ConfigError, match="lambada has no chat mode"):
        parse_tasks("arc_easy,lambada", chat=True)
    with pytest.raises(ConfigError, match="val has no chat mode"):
        parse_tasks("val", chat=True)


# -- the CLI on tiny saved runs --------------------------------------------------------------


def always_b_gpt(tokenizer: BPETokenizer, letter: str = "B") -> GPT:
    """A tiny GPT whose next token is always `letter`: the final LayerNorm's gain is zero and
    its bias a unit vector, so every position's output is that vector, which only the
    letter's head row sees (logit 10, every other 0)."""
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=1024,
                      vocab_size=tokenizer.vocab_size, tie_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.zero_()
        model.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        for text in (letter, " " + letter):  # its token under either template
            model.lm_head.weight[tokenizer.encode_ordinary(text)[-1], 0] = 10.0
    return model


def save_run(path: Path, model: GPT, tokenizer: BPETokenizer, template: str | None) -> Path:
    """A checkpoint directory; `template` set: a chat finetune that recorded it."""
    sft = SFTConfig() if template is None else SFTConfig(data="chats.jsonl", template=template)
    checkpoint.save(path, model, to_dict(RunConfig(model=model.cfg, sft=sft)))
    tokenizer.save(path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat_runs")
    tok = chat_bpe()
    model = always_b_gpt(tok)
    return {
        "chat": save_run(root / "chat", model, tok, "special_tokens"),
        "base": save_run(root / "base", model, tok, None),
    }


@pytest.fixture
def run_eval(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTLAB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli_main.main(["eval", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


needs_arc = pytest.mark.skipif(not ARC_FILE.is_file(), reason="set GPTLAB_DATA_DIR (arc_easy)")


def _always_b_expected() -> tuple[float, float]:
    """acc and chance of answering B on the --limit 8 subset of the shared ARC-Easy file."""
    examples = arc_easy.read(ARC_FILE)
    chosen = [examples[int(i)] for i in subset(len(examples), 8, 0)]
    acc = sum(ex.gold == 1 for ex in chosen) / 8
    return acc, sum(1 / len(ex.choices) for ex in chosen) / 8


@needs_arc
def test_cli_chat_mode_on_a_chat_tuned_run(runs, run_eval):
    code, out, err = run_eval(str(runs["chat"]), "--tasks", "arc_easy", "--chat", "--limit",
                              "8", "--out", "res.json")  # fmt: skip
    assert code == 0, err
    assert "arc_easy_chat" in out and "chat_score" in out
    doc = json.loads(Path("res.json").read_text())
    task = doc["tasks"]["arc_easy_chat"]
    acc, chance = _always_b_expected()
    assert task["n"] == 8 and task["skipped"] == 0 and task["cropped"] == 0
    assert task["acc"] == pytest.approx(acc) and task["chance"] == pytest.approx(chance)
    assert doc["chat_score_tasks"] == ["arc_easy_chat"] and "score" not in doc
    settings = doc["settings"]["tasks"]["arc_easy_chat"]
    assert settings["template"] == "special_tokens" and settings["mode"] == "chat"


@needs_arc
def test_cli_chat_on_a_base_model_needs_a_template(runs, run_eval):
    code, _, err = run_eval(str(runs["base"]), "--tasks", "arc_easy", "--chat", "--limit", "8")
    assert code == 2
    line = _one_line(err)
    assert "base model" in line and "--chat-template plain|special_tokens" in line
    code, out, err = run_eval(str(runs["base"]), "--tasks", "arc_easy", "--chat-template",
                              "plain", "--limit", "8", "--out", "res.json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(Path("res.json").read_text())
    assert doc["tasks"]["arc_easy_chat"]["acc"] == pytest.approx(_always_b_expected()[0])
    assert doc["settings"]["tasks"]["arc_easy_chat"]["template"] == "plain"


def test_cli_chat_refuses_a_task_without_a_chat_mode(runs, run_eval):
    code, _, err = run_eval(str(runs["chat"]), "--tasks", "lambada", "--chat")
    assert code == 2
    assert "lambada has no chat mode" in _one_line(err)
