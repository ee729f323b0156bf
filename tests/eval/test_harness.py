"""The lm-evaluation-harness adapter, offline: a task defined by a YAML file over a local JSONL
gives the same per-example choices as our own scorer, and the other request types agree with
ours. Skipped when lm_eval (the `eval` extra) is not installed."""

import json
import math

import pytest
import torch
from tests.eval.conftest import write_jsonl

from gptlab.eval.api import run_tasks
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (gptlab[eval])")

ROWS = [
    {"query": "Question: Which is a fruit?", "choices": ["apple", "stone", "car"], "gold": 0},
    {"query": "Question: What is cold?", "choices": ["fire", "ice"], "gold": 1},
    {
        "query": "Question: Where do fish live?",
        "choices": ["trees", "water", "sand", "air"],
        "gold": 1,
    },
    {"query": "Question: 2 + 2?", "choices": ["4", "five", "22"], "gold": 0},
    {"query": "Question: Night sky?", "choices": ["stars", "sun"], "gold": 0},
    {"query": "Question: Opposite of up?", "choices": ["down", "left", "sideways"], "gold": 0},
]
YAML = """task: local_arc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{query}}}}\\nAnswer:"
doc_to_target: "{{{{gold}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def offline_hf(monkeypatch, tmp_path):
    """Hugging Face datasets and hub offline, with caches under tmp_path."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=32, vocab_size=257)).eval()


@pytest.mark.slow
def test_harness_and_native_scorer_choose_alike(offline_hf, tmp_path, model, byte_tok):
    from gptlab.eval.harness import GptlabLM, run_harness

    data = write_jsonl(tmp_path / "arc.jsonl", ROWS)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "local_arc.yaml").write_text(YAML.format(data=data, cache=tmp_path / "cache"))
    lm = GptlabLM(model=model, tokenizer=byte_tok, batch_size=4)
    out = run_harness(lm, ["local_arc"], include_paths=[tasks], log_samples=True)
    samples = sorted(out["samples"]["local_arc"], key=lambda s: s["doc_id"])
    lls = [[ll for ll, _ in s["filtered_resps"]] for s in samples]
    harness_pred = [max(range(len(x)), key=lambda i: (x[i], -i)) for x in lls]
    chars = [[len(c) for c in r["choices"]] for r in ROWS]
    harness_norm = [
        max(range(len(x)), key=lambda i: (x[i] / n[i], -i)) for x, n in zip(lls, chars, strict=True)
    ]
    native = run_tasks(model, byte_tok, "arc_easy", data_paths={"arc_easy": data}).results[0]
    assert native.predictions["pred"] == harness_pred
    assert native.predictions["pred_norm"] == harness_norm
    assert native.metrics["acc"] == pytest.approx(out["results"]["local_arc"]["acc,none"])
    assert json.dumps(out["results"])  # plain numbers, ready for the results file


def test_rolling_and_generation_use_our_machinery(model, byte_tok, tmp_path):
    from gptlab.eval.harness import GptlabLM

    lm = GptlabLM(model=model, tokenizer=byte_tok, batch_size=2)
    text = "a text longer than one window of thirty-two tokens, so two windows"
    [rolled] = lm.loglikelihood_rolling([(text,)])
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    native = run_tasks(model, byte_tok, f"ppl:{tmp_path / 't.txt'}").results[0]
    assert -rolled / native.settings["tokens"] == pytest.approx(native.metrics["loss"])
    assert native.settings["tokens"] == len(text.encode())  # every byte, after BOS
    [(ll, greedy)] = lm.loglikelihood([("Question: x?\nAnswer:", " y")])
    assert math.isfinite(ll) and ll < 0 and isinstance(greedy, bool)
    [reply] = lm.generate_until([("Once", {"until": ["\n"], "max_gen_toks": 5})])
    assert isinstance(reply, str) and "\n" not in reply
