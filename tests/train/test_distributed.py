"""torchrun on CPU (gloo): DDP and FSDP2 train like one process with accumulation, any
checkpoint resumes on any number of processes, and an FSDP model built on the meta device holds
what GPT(cfg) holds. Each torchrun job starts 2 Python processes; run as a script under torchrun,
this file is the worker of the meta-device test."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab import checkpoint
from gptlab.config import to_dict
from gptlab.errors import GptlabError
from gptlab.model.config import ModelConfig, MoEConfig
from gptlab.model.gpt import GPT
from gptlab.runtime import Launch, Runtime, close_runtime, make_runtime, seed_everything
from gptlab.train import distributed
from gptlab.train.config import RunConfig
from gptlab.train.loop import train
from gptlab.train.resume import restore_loader


def _with(cfg, **train_kw):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_kw))


def _muon(cfg):
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, name="muon"))


@pytest.fixture
def base(tiny_run):
    """12 steps of 4 sequences per micro-batch, evaluated (3 batches: uneven over 2 ranks) and
    snapshotted at steps 6 and 12."""
    return _with(
        tiny_run,
        max_steps=12,
        batch_size=4,
        eval_interval=6,
        eval_steps=3,
        log_interval=1,
        keep_checkpoints=2,
    )


def _torchrun(cfg, out_dir: Path, tmp_path: Path, *flags: str, resume: bool = False) -> None:
    config = tmp_path / f"{out_dir.name}.json"
    config.write_text(json.dumps(to_dict(cfg)))
    env = {
        **os.environ,
        "GPTLAB_CACHE_DIR": str(tmp_path / "cache"),  # the in-process runs' cache (locations)
        "GPTLAB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "gptlab",
        "train",
        "--config",
        str(config),
        "--train.out_dir",
        str(out_dir),
        *flags,
    ]
    if resume:
        cmd.append("--resume")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def _losses(run_dir: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def _assert_same_run(a: Path, b: Path, steps=range(1, 13)) -> None:
    for key in ("train_loss", "val_loss"):
        la, lb = _losses(a, key), _losses(b, key)
        common = [s for s in steps if s in la]
        assert common and all(s in lb for s in common)
        for s in common:
            assert lb[s] == pytest.approx(la[s], rel=1e-5, abs=1e-6), (key, s)


def _continue_from(src: Path, step: int, dst: Path) -> None:
    """A run directory whose latest/ is `src`'s snapshot at `step` (as if it crashed then)."""
    dst.mkdir()
    shutil.copytree(src / f"step_{step:07d}", dst / "latest")
    shutil.copy(src / "config.json", dst / "config.json")


@pytest.mark.slow
def test_ddp_two_ranks_equal_one_rank_accumulating_two(base, locations, tmp_path):
    """2 ranks x 1 micro-batch (DDP, gradients all-reduced on the last micro-batch) trains
    loss for loss like 1 process x 2 accumulated micro-batches; then a 1-process checkpoint
    resumes on 2 ranks, and the 2-rank checkpoint on 1 process, continuing the same run."""
    single = train(
        _with(base, grad_accum_steps=2, out_dir=str(tmp_path / "single")),
        make_runtime("cpu", "float32"),
        locations,
    ).run_dir
    _torchrun(base, tmp_path / "ddp", tmp_path)
    _assert_same_run(single, tmp_path / "ddp")

    _continue_from(single, 6, tmp_path / "to_two")
    _torchrun(base, tmp_path / "to_two", tmp_path, resume=True)
    _assert_same_run(single, tmp_path / "to_two", steps=range(7, 13))

    _continue_from(tmp_path / "ddp", 6, tmp_path / "to_one")
    train(
        _with(base, grad_accum_steps=2, out_dir=str(tmp_path / "to_one")),
        make_runtime("cpu", "float32"),
        locations,
        resume=True,
    )
    _assert_same_run(single, tmp_path / "to_one", steps=range(7, 13))


@pytest.mark.slow
def test_time_budget_stops_every_rank_at_the_same_step(base, tmp_path):
    """Under train.max_seconds the ranks agree on the time (the slowest rank's), so they set
    the same lr and stop after the same step: the job ends (no rank waits in a collective
    the others left) with one final evaluation and checkpoint."""
    cfg = _with(base, max_steps=100_000, max_seconds=1.5, eval_interval=100_000)
    _torchrun(cfg, tmp_path / "timed", tmp_path)
    evals = _losses(tmp_path / "timed", "val_loss")
    assert len(evals) == 1
    (step,) = evals
    assert 0 < step < 100_000
    assert checkpoint.load_pt(tmp_path / "timed" / "latest", checkpoint.STATE)["step"] == step


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_fsdp_equals_one_rank_and_resumes_unsharded(base, locations, tmp_path, optimizer):
    """FSDP2 shards weights, gradients and optimizer state over 2 ranks (Muon gathers each
    matrix to orthogonalise it) and still matches 1 process x 2 micro-batches; its gathered
    checkpoint resumes in a single process."""
    cfg = _muon(base) if optimizer == "muon" else base
    single = train(
        _with(cfg, grad_accum_steps=2, out_dir=str(tmp_path / "single")),
        make_runtime("cpu", "float32"),
        locations,
    ).run_dir
    _torchrun(cfg, tmp_path / "fsdp", tmp_path, "--train.strategy", "fsdp")
    _assert_same_run(single, tmp_path / "fsdp")

    if optimizer == "adamw":
        return  # resuming the gathered checkpoint in one process: once is enough
    _continue_from(tmp_path / "fsdp", 6, tmp_path / "to_one")
    train(
        _with(cfg, grad_accum_steps=2, out_dir=str(tmp_path / "to_one")),
        make_runtime("cpu", "float32"),
        locations,
        resume=True,
    )
    _assert_same_run(single, tmp_path / "to_one", steps=range(7, 13))


def test_fsdp_in_one_process_is_refused(base, locations):
    with pytest.raises(GptlabError, match="single process; launch with torchrun"):
        train(_with(base, strategy="fsdp"), make_runtime("cpu", "float32"), locations)


def test_packed_position_does_not_move_to_another_world_size(base, locations):
    """The packed loader's buffers belong to the ranks that filled them: refuse, clearly."""
    import numpy as np

    from gptlab.data.loader import PackedLoader
    from gptlab.data.shards import TokenShards

    docs = np.array([[0, i * 10, i * 10 + 10] for i in range(10)])
    data = TokenShards([np.zeros(100, np.uint16)], docs, vocab_size=4, bos_id=0)
    loader = PackedLoader(data, 2, 8, seed=0)
    state = {"loader": {"kind": "packed", "ranks": [loader.state_dict()] * 2}}
    one = Runtime(device=torch.device("cpu"), compute_dtype=torch.float32)
    with pytest.raises(GptlabError, match="written by 2 processes"):
        restore_loader(loader, state, "packed", one)
    with pytest.raises(GptlabError, match="cannot change data.loader"):
        restore_loader(loader, state, "random", one)


# --- FSDP from the meta device

INIT_SEED, CHECKPOINT_SEED = 7, 8
INIT_CONFIGS = {
    "gpt2": ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=40),
    "rope_moe": ModelConfig(
        n_layer=2,
        n_head=2,
        n_embd=32,
        seq_len=16,
        vocab_size=40,
        pos_emb="rope",
        norm="rmsnorm",
        mlp="swiglu",
        tie_embeddings=False,
        moe=MoEConfig(n_experts=3, top_k=2, bias_balancing=True),  # 3 experts: uneven shards
    ),
}


def _tokens() -> torch.Tensor:
    return torch.randint(40, (2, 16), generator=torch.Generator().manual_seed(0))  # (B, T)


def _fsdp_init_worker(out_dir: Path) -> None:
    """One torchrun process: build each config under FSDP from the meta device and record what
    the test compares (rank 0 writes it): the gathered state, the buffers, every rank's shard
    sizes and an eval loss; then the gathered state after loading a checkpoint."""
    env = os.environ
    ranks = {k: int(env[k.upper()]) for k in ("rank", "local_rank", "world_size")}
    runtime = make_runtime("cpu", "float32", Launch(**ranks))
    for name, cfg in INIT_CONFIGS.items():
        model, wrapped = distributed.build_model(cfg, "fsdp", runtime, INIT_SEED)
        record = {
            "init": distributed.full_model_state(model),
            "buffers": {n: b.clone() for n, b in model.named_buffers()},
            "local_numel": distributed.gather_objects(
                sum(p.to_local().numel() for p in model.parameters()), runtime
            ),
        }
        with torch.no_grad():
            record["loss"] = wrapped.eval()(_tokens(), _tokens())[0].item()
        distributed.load_weights(model, out_dir / f"ckpt_{name}")
        record["loaded"] = distributed.full_model_state(model)
        if runtime.is_main_rank:
            torch.save(record, out_dir / f"{name}.pt")
    close_runtime(runtime)


@pytest.mark.slow
def test_fsdp_model_built_on_meta_equals_gpt_and_loads_checkpoints(tmp_path):
    """2 FSDP ranks build the model on the meta device and initialise only their shards; the
    gathered weights and the buffers (rotary tables, MoE balancing biases) equal GPT(cfg)'s for
    the same seed, exactly, and so does the loss. Loading a checkpoint fills the shards too."""
    saved = {}
    for name, cfg in INIT_CONFIGS.items():
        seed_everything(CHECKPOINT_SEED)
        saved[name] = GPT(cfg)
        checkpoint.save(tmp_path / f"ckpt_{name}", saved[name], to_dict(RunConfig(model=cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           __file__, str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    for name, cfg in INIT_CONFIGS.items():
        record = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        seed_everything(INIT_SEED)
        ref = GPT(cfg)
        for key, loaded in (("init", ref), ("loaded", saved[name])):
            expected = loaded.state_dict()
            assert set(record[key]) == set(expected), (name, key)
            for k, v in record[key].items():
                assert torch.equal(v, expected[k]), (name, key, k)
        buffers = dict(ref.named_buffers())
        assert set(record["buffers"]) == set(buffers)
        for k, v in record["buffers"].items():
            assert torch.equal(v, buffers[k]), (name, k)
        total = sum(p.numel() for p in ref.parameters())
        assert sum(record["local_numel"]) == total  # each rank holds its shards only
        assert all(0 < n < total for n in record["local_numel"])
        with torch.no_grad():
            assert record["loss"] == pytest.approx(ref.eval()(_tokens(), _tokens())[0].item())


if __name__ == "__main__":  # a torchrun worker of the meta-device test
    _fsdp_init_worker(Path(sys.argv[1]))
