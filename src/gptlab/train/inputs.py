"""A run's data: prepared shards, their tokenizer, the train loader and the eval splits.

The data comes first in a run because its tokenizer fixes the model's vocabulary size: the
config's `model.vocab_size` is replaced by the data's (and the change is logged).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from gptlab.data.loader import build_loader
from gptlab.data.prepare import prepare
from gptlab.data.registry import Locations
from gptlab.data.shards import TokenShards, load_meta, open_split
from gptlab.errors import GptlabError
from gptlab.runtime import Runtime
from gptlab.tokenizer.base import Tokenizer
from gptlab.train import checks, distributed
from gptlab.train.config import RunConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunData:
    data_dir: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer
    splits: dict[str, TokenShards]  # "train", "val"
    token_bytes: torch.Tensor  # (V,) UTF-8 bytes of each token id, for bits per byte
    tokenizer_files: list[str]  # files in data_dir that every checkpoint carries along


def open_data(cfg: RunConfig, locations: Locations, runtime: Runtime) -> tuple[RunConfig, RunData]:
    """Prepare (or find) the data; returns the config with the data's vocab_size, and the data."""
    if runtime.is_main_rank:
        data_dir = prepare(cfg.data, locations, progress=True)
    distributed.barrier(runtime)  # rank 0 tokenizes once while the others wait
    if not runtime.is_main_rank:
        data_dir = prepare(cfg.data, locations)  # finds rank 0's shards (a shared filesystem)
    meta = load_meta(data_dir)
    tok = checks.data_tokenizer(data_dir, meta, cfg)
    if meta["vocab_size"] != cfg.model.vocab_size:
        if runtime.is_main_rank:
            log.info(
                "model.vocab_size %d -> %d: the vocabulary of %s's tokenizer (%s)",
                cfg.model.vocab_size,
                meta["vocab_size"],
                cfg.data.dataset,
                cfg.data.tokenizer,
            )
        cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, vocab_size=meta["vocab_size"])
        )
    T = cfg.model.seq_len
    splits = {split: open_split(data_dir, split) for split in ("train", "val")}
    for split, data in splits.items():
        if data.n_tokens < T + 1:
            raise GptlabError(
                f"the {split} split of {cfg.data.dataset} has {data.n_tokens} tokens, fewer than "
                f"one window of model.seq_len + 1 = {T + 1}; use more text or a smaller "
                "--model.seq_len"
            )
    token_bytes = torch.from_numpy(tok.token_bytes()).long()
    files = meta.get("tokenizer_files", ["tokenizer.json"])
    return cfg, RunData(data_dir, meta, tok, splits, token_bytes, files)


def train_loader(cfg: RunConfig, data: RunData, runtime: Runtime) -> Any:
    """This rank's loader of training batches, at the shape of step 0."""
    B0, T0, _ = cfg.train.shape_at(0, cfg.model.seq_len, runtime.world_size)
    try:
        return build_loader(
            cfg.data.loader,
            data.splits["train"],
            B0,
            T0,
            seed=cfg.train.seed,
            rank=runtime.rank,
            world_size=runtime.world_size,
            with_doc_starts=cfg.model.doc_mask,
        )
    except ValueError as e:
        raise GptlabError(str(e)) from None
