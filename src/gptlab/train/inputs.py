"""A run's data: prepared shards, their tokenizer, the train loader and the eval splits.

The data comes first in a run because its tokenizer fixes the model's vocabulary size: the
config's `model.vocab_size` is replaced by the data's (and the change is logged).

Chat finetuning (`sft.data` set) reads conversations instead of shards: they are rendered with
the chat template of the tokenizer (the `--init-from` model's, or `data.tokenizer`), held out
for validation, and batched by data/chat.py with every non-reply target set to -1; the rest of
the run is the ordinary loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from gptlab.data.chat import (
    ChatExamples,
    ChatLoader,
    fixed_chat_batches,
    split_examples,
    tokenize_conversations,
)
from gptlab.data.conversations import read_conversations
from gptlab.data.loader import Batch, build_loader, fixed_batches
from gptlab.data.prepare import prepare
from gptlab.data.registry import Locations, resolve_chat_data, sha256_file
from gptlab.data.shards import TokenShards, load_meta, open_split
from gptlab.errors import ConfigError, GptlabError
from gptlab.infer.load import open_weights
from gptlab.runtime import Runtime
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.chat import chat_template
from gptlab.tokenizer.load import resolve_tokenizer
from gptlab.train import checks, distributed
from gptlab.train.config import RunConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunData:
    data_dir: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer
    splits: dict[str, TokenShards]  # "train", "val" ({} for chat data)
    token_bytes: torch.Tensor  # (V,) UTF-8 bytes of each token id, for bits per byte
    tokenizer_files: list[str]  # files in data_dir that every checkpoint carries along
    chat: dict[str, ChatExamples] | None = None  # "train", "val" conversations (sft.data)


SFT_DATA = "sft_data.json"  # in the run directory: the conversation files and what was read


def loader_kind(cfg: RunConfig) -> str:
    """The name a checkpoint records for the training loader (resume must match it)."""
    return "chat" if cfg.sft.enabled else cfg.data.loader


def open_data(
    cfg: RunConfig, locations: Locations, runtime: Runtime, resume: bool = False
) -> tuple[RunConfig, RunData]:
    """Prepare (or find) the data; returns the config with the data's vocab_size, and the data."""
    if cfg.sft.enabled:
        return open_chat_data(cfg, locations, runtime, resume)
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


def _with_vocab(cfg: RunConfig, vocab_size: int, source: str, runtime: Runtime) -> RunConfig:
    if vocab_size == cfg.model.vocab_size:
        return cfg
    if runtime.is_main_rank:
        log.info("model.vocab_size %d -> %d: the vocabulary of %s", cfg.model.vocab_size,
                 vocab_size, source)  # fmt: skip
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))


def _chat_tokenizer(cfg: RunConfig, locations: Locations) -> Tokenizer:
    """The tokenizer conversations are rendered with: the --init-from model's, else the one
    data.tokenizer names (a model trained on conversations from scratch)."""
    if cfg.train.init_from:
        source = open_weights(cfg.train.init_from)
        if source.tokenizer is None:
            raise GptlabError(
                f"--init-from {cfg.train.init_from} carries no tokenizer, which chat finetuning "
                "needs to render conversations; import the model with its tokenizer"
            )
        return source.tokenizer
    try:
        return resolve_tokenizer(
            cfg.data.tokenizer,
            data_dir=locations.data_dir,
            tiktoken_cache_dir=locations.tiktoken_cache_dir,
            allow_download=locations.allow_download,
        )
    except ValueError as e:
        raise ConfigError(
            f"sft: {e} (or start from a trained model with --init-from RUN_DIR)"
        ) from None


def _data_record(paths: list[str], stats: dict[str, int], tok: Tokenizer) -> dict[str, Any]:
    files = []
    for path in paths:
        local = Path(path).expanduser()
        files.append({"path": path, "sha256": sha256_file(local) if local.is_file() else None})
    return {"files": files, "tokenizer": tok.fingerprint(), "stats": stats}


def _check_same_chat_data(run_dir: Path, record: dict[str, Any]) -> None:
    """A resumed chat run must read the conversations it started with (exact resume)."""
    try:
        stored = json.loads((run_dir / SFT_DATA).read_text())
    except (OSError, json.JSONDecodeError):
        return  # nothing recorded (a run dir written by hand): trust the config

    def hashes(r: dict[str, Any]) -> list[Any]:  # paths may move; the contents must not
        return [f.get("sha256") for f in r.get("files", [])]

    if hashes(stored) != hashes(record) or stored.get("tokenizer") != record["tokenizer"]:
        raise GptlabError(
            f"--resume: the conversation data or tokenizer differ from what {run_dir} was "
            f"trained on ({run_dir / SFT_DATA}); resume with the original files or start a "
            "new --train.out_dir"
        )


def open_chat_data(
    cfg: RunConfig, locations: Locations, runtime: Runtime, resume: bool = False
) -> tuple[RunConfig, RunData]:
    """Read, render and split the conversations of `sft.data`; returns the config with the
    tokenizer's vocab_size, the template it used (sft.template) and document masking on when
    packing, and the data."""
    sft, run_dir = cfg.sft, Path(cfg.train.out_dir)
    tok = _chat_tokenizer(cfg, locations)
    try:
        template = chat_template(tok, sft.template)
    except ValueError as e:
        raise ConfigError(f"sft.template: {e}") from None
    paths = resolve_chat_data(sft.paths(), locations)  # registered names -> files
    conversations, read_stats = read_conversations(
        paths, allow_download=locations.allow_download, limit=sft.max_conversations
    )
    try:
        examples = tokenize_conversations(conversations, template, cfg.model.seq_len + 1)
    except ValueError as e:  # e.g. a character a char model's vocabulary lacks
        raise GptlabError(
            f"sft: a conversation cannot be encoded with the {tok.describe()} ({e}); a char "
            "model knows only its corpus's characters: finetune a BPE or GPT-2-token model"
        ) from None
    train_ex, val_ex = split_examples(examples, sft.val_fraction)
    stats = {**read_stats, **examples.stats, "train": len(train_ex), "val": len(val_ex)}
    cfg = _with_vocab(cfg, tok.vocab_size, f"the tokenizer ({tok.describe()})", runtime)
    cfg = dataclasses.replace(cfg, sft=dataclasses.replace(sft, template=template.name))
    if sft.packing and not cfg.model.doc_mask:  # packed conversations must not see each other
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, doc_mask=True))
    record = _data_record(paths, stats, tok)
    if resume:
        _check_same_chat_data(run_dir, record)
    tok_dir = run_dir / "tokenizer"
    if runtime.is_main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        files = [p.name for p in tok.save(tok_dir)]
        (run_dir / SFT_DATA).write_text(json.dumps(record, indent=2) + "\n")
        log.info(
            "conversations: %s", ", ".join(f"{k} {v}" for k, v in stats.items() if v or k in
                                          ("train", "val"))
        )  # fmt: skip
    distributed.barrier(runtime)
    files = [p.name for p in sorted(tok_dir.iterdir())] if not runtime.is_main_rank else files
    meta = {"vocab_size": tok.vocab_size, "chat": record}
    token_bytes = torch.from_numpy(tok.token_bytes()).long()
    chat = {"train": train_ex, "val": val_ex}
    return cfg, RunData(tok_dir, meta, tok, {}, token_bytes, files, chat)


def eval_batches(cfg: RunConfig, data: RunData) -> dict[str, list[Batch]]:
    """The fixed batches every evaluation of the run scores, per split ("train", "val")."""
    tc, T = cfg.train, cfg.model.seq_len
    if data.chat is not None:
        return {
            split: fixed_chat_batches(ex, tc.batch_size, T, cfg.sft.packing, tc.eval_steps)
            for split, ex in data.chat.items()
        }
    return {  # document starts only for doc_mask models
        split: fixed_batches(
            shards, tc.eval_steps, tc.batch_size, T, tc.seed + k, cfg.model.doc_mask
        )  # fmt: skip
        for k, (split, shards) in enumerate(data.splits.items(), start=1)
    }


def train_loader(cfg: RunConfig, data: RunData, runtime: Runtime) -> Any:
    """This rank's loader of training batches, at the shape of step 0."""
    B0, T0, _ = cfg.train.shape_at(0, cfg.model.seq_len, runtime.world_size)
    if data.chat is not None:
        pad = data.tokenizer.pad_id if data.tokenizer.pad_id is not None else 0
        return ChatLoader(
            data.chat["train"],
            B0,
            T0,
            seed=cfg.train.seed,
            rank=runtime.rank,
            world_size=runtime.world_size,
            packing=cfg.sft.packing,
            pad_id=pad,
        )
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
