"""`gptlab eval` end to end on a trained tiny Shakespeare model, and one clear line for each
kind of bad input. The verb is called through gptlab.cli.main.main, with `eval` put in its
verb table here in case main.py does not list it yet."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
from tests.conftest import shakespeare_path
from tests.eval.conftest import write_jsonl

from gptlab.cli import main as cli_main
from gptlab.data.registry import Locations
from gptlab.presets import tiny
from gptlab.runtime import make_runtime
from gptlab.train.loop import train

WORDS = "the king and queen of denmark speak to their court about love war and death"
HELLASWAG = (
    "the king and queen speak to their court about\n0\nlove\nand\nof\nthe\n"
    "the queen of denmark speak to the king about war and\n2\nthe\nof\ndeath\nking\n"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny model trained 20 steps on Shakespeare (or generated text of its words)."""
    root = tmp_path_factory.mktemp("eval_run")
    shakespeare = shakespeare_path()
    corpus = root / "corpus.txt"
    text = shakespeare.read_text()[:20_000] if shakespeare else " ".join([WORDS] * 300)
    corpus.write_text(text + "\nQuestion: Answer:\n", encoding="utf-8")  # the ARC prompt's letters
    cfg = tiny()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, dataset=str(corpus)),
        train=dataclasses.replace(cfg.train, out_dir=str(root / "run")),
    )
    loc = Locations(cache_dir=root / "cache", allow_download=False)
    train(cfg, make_runtime("cpu", "float32"), loc)
    return root / "run"


@pytest.fixture
def run_eval(trained, tmp_path, monkeypatch, capsys):
    """main(["eval", ...]) with the run's cache, offline, in tmp_path: (exit code, out, err)."""
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(trained.parent / "cache"))
    monkeypatch.setenv("GPTLAB_OFFLINE", "1")
    monkeypatch.delenv("GPTLAB_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(cli_main.VERBS, "eval", ("gptlab.cli.eval", "evaluate a model"))

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli_main.main(["eval", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_eval_of_a_trained_model_end_to_end(run_eval, trained, tmp_path):
    (tmp_path / "hs.txt").write_text(HELLASWAG, encoding="utf-8")
    code, out, err = run_eval(
        str(trained),
        "--tasks", f"val,hellaswag,ppl:{trained.parent / 'corpus.txt'}",
        "--data-path", f"hellaswag={tmp_path / 'hs.txt'}",
        "--dtype", "float32",
        "--out", "res.json",
    )  # fmt: skip
    assert code == 0, err
    assert "task" in out and "val" in out and "wrote res.json" in out
    doc = json.loads((tmp_path / "res.json").read_text())
    model = doc["model"]
    assert model["step"] == 20 and model["params"] > 0 and len(model["config_hash"]) == 16
    assert model["checkpoint"].endswith("best") and model["dtype"] == "float32"
    hs, val = doc["tasks"]["hellaswag"], doc["tasks"]["val"]
    assert hs["n"] == 2 and hs["chance"] == 0.25 and {"acc", "acc_stderr", "acc_norm"} <= set(hs)
    # the whole val split scores what training's few eval batches of it logged, near enough
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    logged = [r["val_loss"] for r in rows if "val_loss" in r][-1]
    assert val["loss"] == pytest.approx(logged, abs=0.3) and val["loss_stderr"] > 0
    assert val["bpb"] == pytest.approx(val["loss"] / math.log(2), rel=0.05)  # ~1 byte per char
    ppl = doc["tasks"][f"ppl:{trained.parent / 'corpus.txt'}"]
    assert ppl["word_perplexity"] > 1
    assert doc["score_tasks"] == ["hellaswag"] and "score" in doc
    settings = doc["settings"]
    assert settings["bos"] is False and settings["context"] == 32  # char tokenizer: no BOS
    assert settings["tasks"]["hellaswag"]["data"].endswith("hs.txt")
    assert len(settings["tasks"]["hellaswag"]["sha256"]) == 64


def test_examples_longer_than_the_context_are_cropped_with_a_count(run_eval, trained, tmp_path):
    long = " ".join([WORDS] * 3)  # 3 x 77 characters: longer than the 32-token context
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": long}, {"text": long + " king"}])
    code, out, err = run_eval(
        str(trained), "--tasks", "lambada", "--data-path", f"lambada={path}", "--dtype", "float32"
    )
    assert code == 0, err
    assert "lambada: 2 of 2 examples were longer than the 32-token context" in out
    assert (
        json.loads((tmp_path / "eval_results.json").read_text())["tasks"]["lambada"]["cropped"] == 2
    )


def test_unknown_task(run_eval, trained):
    code, _, err = run_eval(str(trained), "--tasks", "hellaswag,mmlu")
    assert code == 2
    assert "unknown task 'mmlu'; the tasks are hellaswag, lambada, arc_easy" in _one_line(err)


def test_missing_data_file(run_eval, trained):
    code, _, err = run_eval(str(trained), "--tasks", "piqa")
    assert code == 1
    assert "no piqa data: put piqa/valid.jsonl under the data folder" in _one_line(err)


def test_malformed_jsonl_row(run_eval, trained, tmp_path):
    bad = tmp_path / "arc.jsonl"
    bad.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": \n')
    code, _, err = run_eval(str(trained), "--tasks", "arc_easy", "--data-path", f"arc_easy={bad}")
    assert code == 1 and f"{bad}:2 is not valid JSON" in _one_line(err)


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_limit_zero_or_negative(run_eval, trained, limit):
    code, _, err = run_eval(str(trained), "--tasks", "val", "--limit", limit)
    assert code == 2 and "--limit must be a positive number of examples" in _one_line(err)


def test_target_that_is_not_a_model(run_eval, tmp_path):
    (tmp_path / "notes").mkdir()
    code, _, err = run_eval(str(tmp_path / "notes"))
    assert code == 1 and "is not a run directory" in _one_line(err)
    code, _, err = run_eval(str(tmp_path / "nowhere"))
    assert code == 1 and "does not exist" in _one_line(err)
    hf = tmp_path / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')
    code, _, err = run_eval(str(hf))
    assert code == 1 and f"pass hf:{hf}" in _one_line(err)


def test_harness_without_lm_eval(run_eval, trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    code, _, err = run_eval(str(trained), "--harness", "hellaswag")
    assert code == 1
    assert "--harness needs lm-evaluation-harness" in _one_line(err)
    assert "pip install 'gptlab[eval]'" in err


HARNESS_YAML = """task: local_choice
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
"""


@pytest.mark.slow
def test_harness_results_go_in_the_same_file(run_eval, trained, tmp_path, monkeypatch):
    """--harness on a local YAML task over the same rows as --tasks arc_easy: one file holds
    both, with the same accuracy."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (gptlab[eval])")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rows = [
        {"query": "the king", "choices": ["and queen", "of war"], "gold": 0},
        {"query": "love and", "choices": ["death", "the court", "speak"], "gold": 0},
        {"query": "speak to", "choices": ["their court", "about"], "gold": 1},
    ]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    (tmp_path / "tasks").mkdir()
    yaml = HARNESS_YAML.format(data=data, cache=tmp_path / "cache")
    (tmp_path / "tasks" / "local_choice.yaml").write_text(yaml)
    code, out, err = run_eval(
        str(trained), "--tasks", "arc_easy", "--data-path", f"arc_easy={data}",
        "--harness", "local_choice", "--harness-include", str(tmp_path / "tasks"),
        "--dtype", "float32",
    )  # fmt: skip
    assert code == 0, err
    assert "harness local_choice: acc" in out
    doc = json.loads((tmp_path / "eval_results.json").read_text())
    ours, theirs = doc["tasks"]["arc_easy"], doc["harness"]["results"]["local_choice"]
    assert ours["n"] == 3 and ours["acc"] == pytest.approx(theirs["acc,none"])
