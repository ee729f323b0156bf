"""torchrun on CPU (gloo): DDP and FSDP2 train like one process with accumulation, and any
checkpoint resumes on any number of processes. Each torchrun job starts 2 Python processes."""

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

from gptlab.config import to_dict
from gptlab.errors import GptlabError
from gptlab.runtime import Runtime, make_runtime
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
