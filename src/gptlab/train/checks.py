"""What a run checks before it starts: a fresh run directory, and that a resumed run (or a
prepared dataset) matches the model, optimizer and tokenizer it is used with.

Each check raises GptlabError with one line that says what differs and how to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptlab.config import to_dict
from gptlab.errors import ConfigError, GptlabError
from gptlab.eval.tasks import parse_tasks
from gptlab.model.config import ModelConfig
from gptlab.runtime import Runtime
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.load import load_tokenizer
from gptlab.train.config import RunConfig
from gptlab.train.metrics import METRICS


def check_fresh_run_dir(run_dir: Path) -> None:
    taken = [n for n in ("latest", "best", METRICS) if (run_dir / n).exists()]
    if taken:
        raise GptlabError(
            f"run directory {run_dir} already holds a run ({', '.join(taken)}); pass --resume to "
            "continue it or choose another --train.out_dir (nothing was overwritten)"
        )


# model fields a resumed run may change: they do not change the weights
RESUMABLE_CHANGES = ("dropout", "attn_backend")


def check_same_architecture(stored: dict[str, Any], new: ModelConfig) -> None:
    new_d = json.loads(json.dumps(to_dict(new)))  # tuples -> lists, as stored
    changed = [
        k for k in new_d if k in stored and stored[k] != new_d[k] and k not in RESUMABLE_CHANGES
    ]
    if changed:
        k = changed[0]
        raise GptlabError(
            f"--resume cannot change the architecture: model.{k} is {stored[k]} in the checkpoint "
            f"but {new_d[k]} now; drop that override or start a new --train.out_dir"
        )


def data_tokenizer(data_dir: Path, meta: dict[str, Any], cfg: RunConfig) -> Tokenizer:
    """The prepared data's tokenizer, checked against the one the config asks for."""
    try:
        tok = load_tokenizer(data_dir)
    except ValueError as e:
        raise GptlabError(f"prepared data {data_dir}: {e}") from None
    if tok.vocab_size != meta["vocab_size"]:
        raise GptlabError(
            f"{data_dir} holds a tokenizer of {tok.vocab_size} ids but data of vocab "
            f"{meta['vocab_size']}; delete it and re-run gptlab prepare"
        )
    wanted = cfg.data.tokenizer
    if wanted == "char" and tok.kind != "char" or wanted != "char" and tok.kind == "char":
        raise GptlabError(
            f"{cfg.data.dataset} was prepared with a {tok.kind} tokenizer but data.tokenizer is "
            f"{wanted!r}; pass --data.tokenizer matching the data, or prepare it again"
        )
    return tok


def check_same_optimizer(stored: dict[str, Any], cfg: RunConfig) -> None:
    """Optimizer state only fits the optimizer that wrote it."""
    old = stored.get("optim", {}).get("name", "adamw")
    new = getattr(cfg.optim, "name", "adamw")
    if old != new:
        raise GptlabError(
            f"--resume cannot switch the optimizer: the checkpoint was trained with {old!r}, "
            f"not {new!r}; resume with --optim.name {old}, or start a new --train.out_dir"
        )


def check_same_data(stored: dict[str, Any], cfg: RunConfig, meta: dict[str, Any]) -> None:
    """A resumed run must read data with the vocabulary its checkpoint was trained on."""
    old_vocab = stored["model"]["vocab_size"]
    if old_vocab != meta["vocab_size"]:
        raise GptlabError(
            f"--resume: the checkpoint was trained with a vocabulary of {old_vocab} ids but "
            f"{cfg.data.dataset} with tokenizer {cfg.data.tokenizer!r} has {meta['vocab_size']}; "
            "resume with the data and tokenizer of the original run"
        )


def check_parallel(cfg: RunConfig, runtime: Runtime) -> None:
    """Refuse what cannot run on this device and set of processes, before any work."""
    tc = cfg.train
    if tc.eval_tasks:
        parse_tasks(tc.eval_tasks)  # ConfigError naming the known tasks
        if "val" in parse_tasks(tc.eval_tasks):
            raise ConfigError(
                "train.eval_tasks: val is measured at every evaluation already (val_loss, "
                "val_bpb); list only benchmarks such as hellaswag,arc_easy"
            )
    if cfg.model.attn_backend == "flex" and runtime.device.type == "cpu":
        raise ConfigError(
            "model.attn_backend flex has no backward pass on a CPU in this torch; train "
            "with --model.attn_backend sdpa (or math) and use flex on a GPU"
        )
    if tc.strategy == "fsdp" and not runtime.distributed:
        raise GptlabError(
            "--train.strategy fsdp shards the model across processes, but this is a single "
            "process; launch with torchrun --nproc_per_node N (N >= 2) or use --train.strategy ddp"
        )
    if tc.strategy == "fsdp" and runtime.needs_grad_scaler:
        raise GptlabError(
            "--train.strategy fsdp does not support float16 loss scaling; use --train.dtype "
            "bfloat16 (or float32)"
        )
    for step in [0, *tc.stage_starts()]:
        try:
            tc.shape_at(step, cfg.model.seq_len, runtime.world_size)
        except ValueError as e:
            where = f" (in the stage from step {step})" if step else ""
            raise GptlabError(f"{e}{where}") from None
