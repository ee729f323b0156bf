"""Tasks: reading every data layout, the metrics on models whose log-probabilities are known,
subsets, BOS, cropping, few-shot, and one clear error for each kind of bad input."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import SHARED
from tests.eval.conftest import CHARS, BigramLM, write_jsonl

from gptlab.data.shards import TokenShards
from gptlab.errors import ConfigError, GptlabError
from gptlab.eval.api import run_tasks
from gptlab.eval.tasks import arc_easy, hellaswag, lambada, parse_tasks, piqa
from gptlab.eval.tasks.base import TaskContext, subset
from gptlab.eval.tasks.choice import ChoiceExample, fewshot_prefix, run_choice_task


def uniform(V: int, seq_len: int = 64) -> BigramLM:
    return BigramLM(torch.zeros(V, V), seq_len)


# -- reading -------------------------------------------------------------------------------


def test_reads_the_text_and_jsonl_layouts(data_dir, tmp_path):
    examples = hellaswag.read(data_dir / "hellaswag" / "hellaswag_val_full.txt")
    assert len(examples) == 3
    assert examples[0] == ChoiceExample(
        "cooking: a man cuts a", ("bed.", "fish.", "car.", "sky."), 1
    )
    row = {
        "activity_label": "Baking",
        "ctx_a": "A cook [title] mixes flour.",
        "ctx_b": "then she",
        "endings": ["[step] bakes  it.", "sings."],
        "label": "0",  # the Hugging Face copy stores the label as text
    }
    [ex] = hellaswag.read(write_jsonl(tmp_path / "hs.jsonl", [row]))
    # the harness's cleanup, leading space of a "[step] ..." ending included
    assert ex == ChoiceExample("Baking: A cook. mixes flour. Then she", (" bakes it.", "sings."), 0)
    passages = lambada.read(data_dir / "lambada" / "lambada_test.jsonl")
    assert passages[0] == ("the cat sat on the", "mat")
    arc = arc_easy.read(data_dir / "arc_easy" / "arc_easy_test.jsonl")
    assert arc[1] == ChoiceExample("Question: what is wet?\nAnswer:", ("sun", "sea"), 1)
    pq = piqa.read(data_dir / "piqa" / "valid.jsonl")
    assert [e.gold for e in pq] == [0, 1]
    assert pq[0].context == "Question: open a jar\nAnswer:"
    labelled = write_jsonl(
        tmp_path / "p.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 1}]
    )
    assert piqa.read(labelled)[0].gold == 1


needs_shared = pytest.mark.skipif(SHARED is None, reason="set GPTLAB_DATA_DIR to the shared data")


@needs_shared
def test_reads_the_real_shared_files():
    root = Path(SHARED)
    full = hellaswag.read(root / "hellaswag" / "hellaswag_val_full.txt")
    assert len(full) == 10042
    assert np.bincount([e.gold for e in full]).tolist() == [2515, 2485, 2584, 2458]
    sample = hellaswag.read(root / "hellaswag" / "hellaswag_val_sample1000.jsonl")
    assert len(sample) == 1000 and all(len(e.choices) == 4 for e in sample)
    assert len(lambada.read(root / "lambada" / "lambada_test.jsonl")) == 5153
    arc = arc_easy.read(root / "arc_easy" / "arc_easy_test.jsonl")
    assert np.bincount([e.gold for e in arc]).tolist() == [565, 592, 634, 585]
    assert len(piqa.read(root / "piqa" / "valid.jsonl")) == 1838


# -- metrics on known log-probabilities ----------------------------------------------------


def _ctx(model, tok, **kw) -> TaskContext:
    return TaskContext(model=model, tokenizer=tok, add_bos=False, **kw)


def test_acc_and_acc_norm_disagree(char_tok):
    """Every token has probability 1/V, so a choice's log-likelihood is -(chars + 1) log V:
    acc picks the shortest choice, acc_norm (divided by characters) the longest."""
    examples = [
        ChoiceExample("q:", ("ab", "abcdef"), 1),
        ChoiceExample("q:", ("abc", "abcdefgh"), 0),
    ]
    result = run_choice_task("mc", examples, _ctx(uniform(len(CHARS)), char_tok), {})
    assert result.predictions["pred"] == [0, 0] and result.predictions["pred_norm"] == [1, 1]
    assert result.metrics["acc"] == 0.5 and result.metrics["acc_norm"] == 0.5
    assert result.metrics["acc_stderr"] == pytest.approx(math.sqrt(0.25 / 1))  # p(1-p)/(n-1)
    assert result.chance == 0.5


def test_acc_norm_divides_by_characters_not_tokens(byte_tok):
    """'éé' is 2 characters but 4 byte tokens: per character it loses to 'abc', per token it
    would win."""
    examples = [ChoiceExample("q:", ("éé", "abc"), 1)]
    result = run_choice_task("mc", examples, _ctx(uniform(257), byte_tok), {})
    assert result.predictions["pred_norm"] == [1]
    ll = {"éé": -5 * math.log(257), "abc": -4 * math.log(257)}  # the space is one token too
    assert ll["éé"] / 4 > ll["abc"] / 3  # what token normalisation would have picked


def test_lambada_needs_every_token_greedy(char_tok, tmp_path):
    """' zy' has a right last token ('y' after 'z') but a wrong first letter ('x' is the
    greedy choice after ' '), so it does not count; ' xy' does."""
    V, i = len(CHARS), {c: k for k, c in enumerate(CHARS)}
    table = torch.zeros(V, V)
    table[i["t"], i[" "]] = 5.0
    table[i[" "], i["x"]] = 5.0
    table[i["z"], i["y"]] = 5.0
    table[i["x"], i["y"]] = 5.0
    model = BigramLM(table)
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": "the cat zy"}, {"text": "the cat xy"}])
    ctx = _ctx(model, char_tok, data=_paths(lambada=path))
    result = lambada.run(ctx)
    assert result.predictions["greedy"] == [0, 1]
    lps = [
        model.logprob(i["t"], i[" "]) + model.logprob(i[" "], i[a]) + model.logprob(i[a], i["y"])
        for a in "zx"
    ]
    assert result.metrics["ppl"] == pytest.approx(math.exp(-sum(lps) / 2))
    assert result.metrics["acc"] == 0.5


def _paths(**files):
    from gptlab.eval.tasks.files import DataSources

    return DataSources(paths=files)


def test_bos_is_prepended_only_when_asked(byte_tok, tmp_path):
    """With BOS, the first byte of a document is predicted from it and scored; without, it
    cannot be predicted and is left out."""
    text = tmp_path / "t.txt"
    text.write_text("hello world", encoding="utf-8")
    model = uniform(257)
    with_bos = run_tasks(model, byte_tok, f"ppl:{text}")
    without = run_tasks(model, byte_tok, f"ppl:{text}", add_bos=False)
    assert with_bos.settings["bos"] and not without.settings["bos"]
    assert with_bos.results[0].settings["tokens"] == 11
    assert without.results[0].settings["tokens"] == 10
    assert with_bos.results[0].metrics["loss"] == pytest.approx(math.log(257))


def test_val_loss_and_bpb_by_hand(char_tok):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(len(CHARS), len(CHARS), generator=g)
    model = BigramLM(table, seq_len=8)
    tokens = torch.randint(len(CHARS), (50,), generator=g).numpy().astype(np.uint16)
    split = TokenShards.from_array(tokens, len(CHARS))
    result = run_tasks(model, char_tok, "val", val_split=split).results[0]
    nll = [-model.logprob(int(a), int(b)) for a, b in zip(tokens[:-1], tokens[1:], strict=True)]
    assert result.metrics["loss"] == pytest.approx(np.mean(nll))
    n_bytes = sum(len(CHARS[t].encode()) for t in tokens[1:])
    assert result.metrics["bpb"] == pytest.approx(sum(nll) / (math.log(2) * n_bytes))
    assert result.n == math.ceil(49 / 8)  # windows of 8 targets, the last one full


def test_ppl_word_perplexity(char_tok, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a bc def", encoding="utf-8")
    (tmp_path / "docs" / "b.txt").write_text("gh ij", encoding="utf-8")
    result = run_tasks(uniform(len(CHARS), 4), char_tok, f"ppl:{tmp_path / 'docs'}").results[0]
    nll = (7 + 4) * math.log(len(CHARS))  # every character but each document's first
    assert result.settings["words"] == 5
    assert result.metrics["word_perplexity"] == pytest.approx(math.exp(nll / 5))


# -- subsets, few-shot, cropping, skipping --------------------------------------------------


def test_limit_picks_the_same_subset_every_time(data_dir, char_tok):
    first = subset(100, 10, seed=0)
    assert first.tolist() == subset(100, 10, seed=0).tolist()
    assert len(set(first.tolist())) == 10 and first.tolist() == sorted(first.tolist())
    assert first.tolist() != subset(100, 10, seed=1).tolist()
    assert subset(5, 10, seed=0).tolist() == [0, 1, 2, 3, 4]
    runs = [
        run_tasks(uniform(len(CHARS)), char_tok, "hellaswag", limit=2, data_dirs=[data_dir])
        for _ in range(2)
    ]
    a, b = (r.results[0].predictions["index"] for r in runs)
    assert a == b and len(a) == 2


def test_fewshot_prefix_is_seeded_and_leaves_the_example_out(char_tok):
    examples = [ChoiceExample(f"q{i}:", ("a", "b"), i % 2) for i in range(6)]
    ctx = _ctx(uniform(len(CHARS)), char_tok, num_fewshot=3)
    prefix = fewshot_prefix(examples, 2, ctx)
    assert prefix == fewshot_prefix(examples, 2, ctx)
    shots = prefix.split("\n\n")[:-1]
    assert len(shots) == 3 and "q2:" not in prefix
    assert all(s in {f"q{i}: {'ab'[i % 2]}" for i in range(6)} for s in shots)


def test_examples_longer_than_the_context_are_cropped_and_counted(data_dir, char_tok):
    report = run_tasks(uniform(len(CHARS), seq_len=8), char_tok, "hellaswag", data_dirs=[data_dir])
    result = report.results[0]
    assert result.cropped == result.n == 3
    assert 0.0 <= result.metrics["acc"] <= 1.0


def test_examples_the_tokenizer_cannot_encode_are_skipped(tmp_path, char_tok):
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"query": "Question: up?", "choices": ["sky", "sea"], "gold": 0},
            {"query": "Question: UP?", "choices": ["SKY", "sea"], "gold": 0},  # no capitals
        ],
    )
    report = run_tasks(uniform(len(CHARS)), char_tok, "arc_easy", data_paths={"arc_easy": path})
    assert report.results[0].n == 1 and report.results[0].skipped == 1


def test_score_is_the_mean_centered_accuracy(data_dir, char_tok):
    report = run_tasks(
        uniform(len(CHARS)), char_tok, "hellaswag,arc_easy,piqa", data_dirs=[data_dir]
    )
    parts = [(r.metrics["acc"] - r.chance) / (1 - r.chance) for r in report.results]
    score, _, names = report.score
    assert score == pytest.approx(np.mean(parts)) and names == ["hellaswag", "arc_easy", "piqa"]
    flat = report.flat()
    assert flat["score"] == score and flat["piqa/chance"] == 0.5 and "hellaswag/acc_norm" in flat


# -- bad input -----------------------------------------------------------------------------


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown task 'hellaswog'.*hellaswag, lambada"):
        parse_tasks("hellaswog,val")
    assert parse_tasks("all") == ["hellaswag", "lambada", "arc_easy", "piqa", "val"]


def test_missing_data_says_which_file_and_where(char_tok, tmp_path):
    with pytest.raises(GptlabError, match="put lambada/lambada_test.jsonl under the data folder"):
        run_tasks(uniform(len(CHARS)), char_tok, "lambada", data_dirs=[tmp_path])
    with pytest.raises(GptlabError, match="piqa data file .*nope.jsonl does not exist"):
        run_tasks(
            uniform(len(CHARS)), char_tok, "piqa", data_paths={"piqa": tmp_path / "nope.jsonl"}
        )


def test_malformed_rows_name_the_file_and_line(tmp_path, char_tok, data_dir):
    bad = tmp_path / "l.jsonl"
    bad.write_text('{"text": "a b"}\n\n{"text": "c d"\n', encoding="utf-8")
    with pytest.raises(GptlabError, match=r"l\.jsonl:3 is not valid JSON"):
        lambada.read(bad)
    missing = write_jsonl(tmp_path / "a.jsonl", [{"query": "Q", "choices": ["a"], "gold": 0}])
    with pytest.raises(GptlabError, match=r"a\.jsonl:1 has 1 choice"):
        arc_easy.read(missing)
    wrong = write_jsonl(tmp_path / "b.jsonl", [{"query": "Q", "choices": ["a", "b"], "gold": "x"}])
    with pytest.raises(GptlabError, match=r"b\.jsonl:1 field 'gold' is 'x', not int"):
        arc_easy.read(wrong)
    txt = tmp_path / "h.txt"
    txt.write_text("ctx\nseven\na\nb\nc\nd\n", encoding="utf-8")
    with pytest.raises(GptlabError, match=r"h\.txt:2 should be a gold label 0-3"):
        hellaswag.read(txt)
    (tmp_path / "p.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    with pytest.raises(GptlabError, match="put p-labels.lst"):
        piqa.read(tmp_path / "p.jsonl")


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_must_be_positive(char_tok, limit):
    with pytest.raises(ConfigError, match="limit must be a positive number"):
        run_tasks(uniform(len(CHARS)), char_tok, "lambada", limit=limit)


def test_val_without_a_split_says_what_it_needs(char_tok):
    with pytest.raises(GptlabError, match="val needs the run's validation split"):
        run_tasks(uniform(len(CHARS)), char_tok, "val")
