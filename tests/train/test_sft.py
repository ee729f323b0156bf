"""Chat finetuning through the one training loop (train(cfg) with sft.data set): conversations
rendered with the tokenizer's template, a masked loss, exact resume; and LoRA on top of a
trained base (only adapters train and are saved; the base is checked by hash)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gptlab import checkpoint
from gptlab.data.config import SFTConfig
from gptlab.errors import ConfigError, GptlabError
from gptlab.model.config import LoRAConfig, ModelConfig
from gptlab.model.lora import is_adapter
from gptlab.presets import tiny
from gptlab.runtime import make_runtime
from gptlab.tokenizer.train import train_bpe_tokenizer
from gptlab.train.config import RunConfig
from gptlab.train.loop import train

TOPICS = ["apples", "rivers", "stars", "music", "bread", "winter", "ships", "gold"]


@pytest.fixture
def chat_files(tmp_path: Path) -> tuple[Path, Path]:
    """A BPE tokenizer with the reserved chat tokens, and 40 small conversations."""
    tok_dir = tmp_path / "tok"
    text = " ".join(f"tell me about {t}. {t} are lovely and old." for t in TOPICS) * 20
    train_bpe_tokenizer([text], vocab_size=300).save(tok_dir)
    rows = []
    for i in range(40):
        t = TOPICS[i % len(TOPICS)]
        messages = [{"role": "user", "content": f"tell me about {t}"},
                    {"role": "assistant", "content": f"{t} are lovely and old."}]  # fmt: skip
        if i % 3 == 0:  # some multi-turn ones
            messages += [{"role": "user", "content": "and more?"},
                         {"role": "assistant", "content": f"more {t}, always."}]  # fmt: skip
        rows.append(json.dumps({"messages": messages}))
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(rows) + "\n")
    return tok_dir, data


def _sft_cfg(tok_dir: Path, data: Path, out: Path, **train_kw) -> RunConfig:
    cfg = tiny()
    return dataclasses.replace(
        cfg,
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=48, dropout=0.1),
        data=dataclasses.replace(cfg.data, tokenizer=str(tok_dir)),
        sft=SFTConfig(data=str(data), val_fraction=0.1),
        train=dataclasses.replace(
            cfg.train,
            out_dir=str(out),
            max_steps=6,
            batch_size=2,
            grad_accum_steps=2,
            eval_interval=3,
            eval_steps=2,
            log_interval=1,
            **train_kw,
        ),  # fmt: skip
    )


def _rt():
    return make_runtime("cpu", "float32")


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_trains_on_replies_and_records_its_template(chat_files, locations, tmp_path):
    cfg = _sft_cfg(*chat_files, tmp_path / "run")
    result = train(cfg, _rt(), locations)
    stored = json.loads((result.run_dir / "config.json").read_text())
    assert stored["sft"]["template"] == "special_tokens"  # resolved from auto and recorded
    assert stored["model"]["doc_mask"] is True  # packed conversations never see each other
    rows = _rows(result.run_dir)
    steps = [r for r in rows if "train_loss" in r]
    # 2 micro-batches of 2 packed rows: far fewer supervised targets than 4 x 48 tokens
    assert all(0 < r["supervised_tokens"] < 4 * 48 for r in steps)
    assert all(r["empty_steps"] == 0 for r in steps)
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 2 and all(v == v for v in vals)
    assert (result.run_dir / "latest" / "tokenizer.json").is_file()
    assert json.loads((result.run_dir / "sft_data.json").read_text())["stats"]["val"] >= 1


@pytest.mark.parametrize("packing", [True, False])
def test_sft_resume_is_exact(chat_files, locations, tmp_path, packing):
    def cfg(name):
        c = _sft_cfg(*chat_files, tmp_path / name)
        return dataclasses.replace(c, sft=dataclasses.replace(c.sft, packing=packing))

    full = {}
    train(cfg("a"), _rt(), locations, on_step=lambda s, loss: full.__setitem__(s, loss))

    class Crash(Exception):
        pass

    def crash(step, loss):
        if step == 4:
            raise Crash

    with pytest.raises(Crash):
        train(cfg("b"), _rt(), locations, on_step=crash)
    resumed = {}
    train(cfg("b"), _rt(), locations, resume=True,
          on_step=lambda s, loss: resumed.__setitem__(s, loss))  # fmt: skip
    assert sorted(resumed) == [4, 5, 6]
    assert all(resumed[s] == full[s] for s in resumed)  # bit-exact on CPU


def _lora_cfg(base_run: Path, chat_files, out: Path) -> RunConfig:
    cfg = _sft_cfg(*chat_files, out)
    stored = checkpoint.load_config(base_run / "latest")
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, **{k: stored["model"][k] for k in ("vocab_size",)}),
        lora=LoRAConfig(rank=4, alpha=8.0, targets="q,v,mlp"),
        train=dataclasses.replace(cfg.train, init_from=str(base_run)),
    )


def test_lora_trains_and_saves_only_adapters_and_resumes_exactly(chat_files, locations, tmp_path):
    base = train(_sft_cfg(*chat_files, tmp_path / "base"), _rt(), locations).run_dir
    full = {}
    run = train(_lora_cfg(base, chat_files, tmp_path / "a"), _rt(), locations,
                on_step=lambda s, loss: full.__setitem__(s, loss)).run_dir  # fmt: skip
    saved = checkpoint.read_weights(run / "latest")
    assert saved and all(is_adapter(n) for n in saved)
    record = json.loads((run / "latest" / "lora_base.json").read_text())
    assert record["init_from"] == str(base) and len(record["weights_sha256"]) == 64
    opt = checkpoint.load_pt(run / "latest", checkpoint.OPTIMIZER)
    assert all(is_adapter(name) for name in opt["state"])  # the optimizer holds adapters only

    class Crash(Exception):
        pass

    def crash(step, loss):
        if step == 4:
            raise Crash

    cfg_b = _lora_cfg(base, chat_files, tmp_path / "b")
    with pytest.raises(Crash):
        train(cfg_b, _rt(), locations, on_step=crash)
    resumed = {}
    train(cfg_b, _rt(), locations, resume=True,
          on_step=lambda s, loss: resumed.__setitem__(s, loss))  # fmt: skip
    assert sorted(resumed) == [4, 5, 6] and all(resumed[s] == full[s] for s in resumed)


def test_lora_refuses_a_changed_base_and_a_missing_one(chat_files, locations, tmp_path):
    base = train(_sft_cfg(*chat_files, tmp_path / "base"), _rt(), locations).run_dir
    cfg = _lora_cfg(base, chat_files, tmp_path / "a")
    train(cfg, _rt(), locations)
    other = train(_sft_cfg(*chat_files, tmp_path / "other", seed=7), _rt(), locations).run_dir
    for name in ("latest", "best"):  # the base's weights change under the adapters
        weights = other / name / checkpoint.WEIGHTS
        (base / name / checkpoint.WEIGHTS).write_bytes(weights.read_bytes())
    with pytest.raises(GptlabError, match="changed since"):
        train(cfg, _rt(), locations, resume=True)
    no_base = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=""))
    with pytest.raises(ConfigError, match="--init-from"):
        train(no_base, _rt(), locations)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_two_ddp_ranks_equal_one_rank_accumulating_two(chat_files, locations, tmp_path, lora):
    """Masked loss under DDP (gloo, 2 processes x 1 micro-batch) trains loss for loss like
    one process x 2 micro-batches: the supervised-target count is summed across ranks before
    the backward pass. With LoRA the frozen base stays out of DDP's gradient sync."""
    from tests.train.test_distributed import _assert_same_run, _torchrun

    cfg = _sft_cfg(*chat_files, tmp_path / "unused")
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, dropout=0.0),
        train=dataclasses.replace(cfg.train, grad_accum_steps=1),
    )
    if lora:
        base = train(_sft_cfg(*chat_files, tmp_path / "base"), _rt(), locations).run_dir
        cfg = dataclasses.replace(
            cfg,
            lora=LoRAConfig(rank=4, targets="all"),
            train=dataclasses.replace(cfg.train, init_from=str(base)),
        )
    single = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, grad_accum_steps=2, out_dir=str(tmp_path / "one"))
    )
    train(single, _rt(), locations)
    _torchrun(cfg, tmp_path / "ddp", tmp_path)
    _assert_same_run(tmp_path / "one", tmp_path / "ddp", steps=range(1, 7))
