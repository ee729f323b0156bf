"""Training on BPE-tokenized data: packing + document masking, bits per byte, resume, checks."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from tests.conftest import SHARED

from gptlab.cli.main import main
from gptlab.data.loader import fixed_batches
from gptlab.data.shards import TokenShards
from gptlab.errors import GptlabError
from gptlab.eval.loss import evaluate
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.runtime import make_runtime
from gptlab.tokenizer.train import train_bpe_tokenizer
from gptlab.train.loop import train

needs_gpt2 = pytest.mark.skipif(
    not SHARED or not (Path(SHARED) / "gpt2_tokenizer" / "encoder.json").is_file(),
    reason="set GPTLAB_DATA_DIR to the shared data folder (GPT-2 tokenizer files)",
)


def _docs_folder(tmp_path: Path, text: str, n: int = 12) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    step = len(text) // n
    for i in range(n):
        (folder / f"{i:02d}.txt").write_text(text[i * step : (i + 1) * step])
    return folder


@pytest.fixture
def bpe_dir(text, tmp_path) -> Path:
    """A 400-id byte-level BPE trained on the test text."""
    out = tmp_path / "bpe"
    out.mkdir()
    train_bpe_tokenizer([text], vocab_size=400).save(out)
    return out


def _packed_run(tiny_run, folder: Path, out: Path, tokenizer: str):
    model = dataclasses.replace(tiny_run.model, doc_mask=True)
    data = dataclasses.replace(
        tiny_run.data, dataset=str(folder), tokenizer=tokenizer, loader="packed"
    )
    train_cfg = dataclasses.replace(tiny_run.train, out_dir=str(out), batch_size=4)
    return dataclasses.replace(tiny_run, model=model, data=data, train=train_cfg)


def test_bits_per_byte_from_token_lengths():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, seq_len=8, vocab_size=10))
    data = TokenShards.from_array(torch.randint(10, (500,)).numpy().astype("uint16"), 10)
    batches = fixed_batches(data, 2, 4, 8, seed=0)
    device = torch.device("cpu")
    one = evaluate(model, batches, device, token_bytes=torch.ones(10, dtype=torch.long))
    assert one["bpb"] == pytest.approx(one["loss"] / math.log(2), rel=1e-6)
    two = evaluate(model, batches, device, token_bytes=torch.full((10,), 2))
    assert two["bpb"] == pytest.approx(one["bpb"] / 2, rel=1e-6)
    special = torch.ones(10, dtype=torch.long)
    special[0] = 0  # id 0 is a special token: neither its loss nor bytes count
    masked = evaluate(model, batches, device, token_bytes=special)
    logits = torch.cat([model(x) for x, _, _ in batches])
    ys = torch.cat([y for _, y, _ in batches])
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ys.flatten(), reduction="none")
    keep = ys.flatten() != 0
    assert masked["bpb"] == pytest.approx(ce[keep].sum().item() / keep.sum().item() / math.log(2))


@needs_gpt2
def test_gpt2_packed_doc_masked_run_logs_bpb_and_samples(
    tiny_run, text, tmp_path, locations, cli_env, capsys, monkeypatch
):
    monkeypatch.setenv("GPTLAB_DATA_DIR", SHARED)
    cfg = _packed_run(tiny_run, _docs_folder(tmp_path, text), tmp_path / "run", "gpt2")
    result = train(cfg, make_runtime("cpu", "float32"), locations)
    evals = [r for r in result.history if "val_loss" in r]
    assert all(0 < r["val_bpb"] < 20 for r in evals)
    assert evals[-1]["val_loss"] < math.log(50257)  # it learned something
    assert (tmp_path / "run" / "latest" / "ranks.tiktoken").is_file() or any(
        p.suffix != ".json" for p in (tmp_path / "run" / "latest").iterdir()
    )
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "run"), "--max_new_tokens", "20", "--prompt", "The"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The") and len(out) > 10


def test_packed_resume_reproduces_uninterrupted_run(tiny_run, text, tmp_path, locations, bpe_dir):
    folder = _docs_folder(tmp_path, text)
    rt = make_runtime("cpu", "float32")
    full = {}
    train(
        _packed_run(tiny_run, folder, tmp_path / "a", str(bpe_dir)),
        rt,
        locations,
        on_step=lambda s, loss: full.__setitem__(s, loss),
    )

    class Crash(Exception):
        pass

    def crash(step, loss):
        if step == 13:
            raise Crash

    cfg_b = _packed_run(tiny_run, folder, tmp_path / "b", str(bpe_dir))
    with pytest.raises(Crash):
        train(cfg_b, rt, locations, on_step=crash)
    resumed = {}
    train(cfg_b, rt, locations, resume=True, on_step=lambda s, loss: resumed.__setitem__(s, loss))
    assert sorted(resumed) == list(range(11, 21))
    assert all(resumed[s] == full[s] for s in resumed)
    loader_b = dataclasses.replace(cfg_b, data=dataclasses.replace(cfg_b.data, loader="random"))
    with pytest.raises(GptlabError, match="cannot change data.loader"):
        train(loader_b, rt, locations, resume=True)


def test_tokenizer_mismatches_are_refused(tiny_run, text_file, tmp_path, locations, bpe_dir):
    rt = make_runtime("cpu", "float32")
    train(tiny_run, rt, locations)  # char vocabulary
    as_bpe = dataclasses.replace(
        tiny_run, data=dataclasses.replace(tiny_run.data, tokenizer=str(bpe_dir))
    )
    with pytest.raises(GptlabError, match="trained with a vocabulary of .* ids but"):
        train(as_bpe, rt, locations, resume=True)
    assert main(["prepare", str(text_file), "--out", str(tmp_path / "prep")]) == 0
    prepared = dataclasses.replace(
        tiny_run,
        data=dataclasses.replace(
            tiny_run.data, dataset=str(tmp_path / "prep"), tokenizer=str(bpe_dir)
        ),
        train=dataclasses.replace(tiny_run.train, out_dir=str(tmp_path / "other")),
    )
    with pytest.raises(GptlabError, match="prepared with a char tokenizer but data.tokenizer"):
        train(prepared, rt, locations)


def test_metrics_have_val_bpb_for_char(tiny_run, locations):
    result = train(tiny_run, make_runtime("cpu", "float32"), locations)
    row = next(r for r in result.history if "val_loss" in r)
    assert row["val_bpb"] == pytest.approx(row["val_loss"] / math.log(2), rel=1e-4)  # ASCII
    stored = json.loads(
        (Path(tiny_run.train.out_dir) / "metrics.jsonl").read_text().splitlines()[-1]
    )
    assert "val_bpb" in stored
