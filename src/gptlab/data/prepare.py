"""Documents -> token shards: `{split}_NNNNN.bin` + a document index + `meta.json`, once.

Tokenizing once up front (nanoGPT's approach) means training reads ids straight from memory
maps: no tokenizer on the hot path and no corpus held in RAM. Preparation streams documents
from the sources, tokenizes them in worker processes (ordered, so the output is deterministic),
puts the tokenizer's BOS in front of every document, and appends them to shards of about
`shard_tokens` tokens (uint16 when the vocabulary fits, else uint32). A shard only ends at a
document end, so every document lies inside one shard; `{split}_NNNNN.docs.npy` holds where each
starts.

The train/val split is by document and deterministic: document i goes to val when
floor((i+1)·f) > floor(i·f), i.e. every 1/f-th document. A corpus with too few documents for
that (one book, TinyShakespeare) instead gives the tail f of its last document to val, which
for a single document is exactly nanoGPT's split.

`meta.json` records a fingerprint of sources, tokenizer and settings: a stale directory is
rebuilt, a fresh one reused. Everything is written under a temporary name and renamed into
place, so an interrupted prepare never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data.config import DataConfig
from gptlab.data.registry import REGISTRY, Locations, find_raw
from gptlab.data.shards import META, ShardWriter, load_meta
from gptlab.data.sources import ReadOptions, Source, iter_documents, resolve_sources
from gptlab.errors import GptlabError
from gptlab.tokenizer.base import SpecialTokenError, Tokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.load import load_tokenizer, resolve_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
PIECE_CHARS = 1 << 20  # documents longer than this are cut into pieces for the workers
TASK_CHARS = 1 << 20  # text per worker task (many short documents, or one piece)
POOL_MIN_BYTES = 16 << 20  # below this, in-process beats starting workers (measured, 2 cores)
_SAFE_CUT = re.compile(r"(?<=\S) ")  # between a non-space and a space: no pre-token spans it


def default_out_dir(dataset: str, loc: Locations, tokenizer_label: str = "") -> Path:
    """<cache>/prepared/NAME[-TOKENIZER]: one folder per corpus and tokenizer, so switching the
    tokenizer keeps both preparations instead of rebuilding one folder back and forth."""
    suffix = f"-{tokenizer_label}" if tokenizer_label else ""
    if dataset in REGISTRY:
        return loc.cache_dir / "prepared" / f"{dataset}{suffix}"
    src = str(Path(dataset).expanduser().resolve()) if not dataset.startswith("hf:") else dataset
    tag = hashlib.sha1(src.encode()).hexdigest()[:8]
    stem = Path(dataset.removeprefix("hf:")).stem or "data"
    return loc.cache_dir / "prepared" / f"{stem}-{tag}{suffix}"


def _tokenizer_label(name: str, tok: Tokenizer | None) -> str:
    """'' for char, the name of a pretrained encoding, else folder name + content hash."""
    if tok is None:
        return ""
    if not Path(name).expanduser().is_dir():
        return name
    return f"{Path(name).expanduser().resolve().name}-{tok.fingerprint()[:8]}"


def is_prepared_dir(path: Path) -> bool:
    return (path / META).is_file()


def cut_points(text: str, piece_chars: int) -> list[int]:
    """Offsets that cut a long document into ~piece_chars pieces without changing its tokens.

    A cut falls between a non-space character and a space. No pre-token of the GPT-2 or GPT-4
    split patterns spans such a boundary (a space only ever starts a pre-token or extends a
    whitespace run), so encoding the pieces separately gives the same ids as the whole.
    """
    cuts, pos = [], piece_chars
    while pos < len(text):
        m = _SAFE_CUT.search(text, pos)
        if m is None:
            break
        cuts.append(m.start())
        pos = m.start() + piece_chars
    return cuts


# -- the worker side: each process loads the tokenizer once ------------------------------------

_worker: dict[str, Any] = {}  # per worker process: the tokenizer and the special-text policy


def _init_worker(tokenizer_dir: str, allow_special_text: bool) -> None:
    _worker["tok"] = load_tokenizer(Path(tokenizer_dir))
    _worker["ordinary"] = allow_special_text


def _encode_texts(idx: list[int], texts: list[str]) -> list[np.ndarray]:
    return _encode_with(_worker["tok"], _worker["ordinary"], idx, texts)


def _encode_with(
    tok: Tokenizer, ordinary: bool, idx: list[int], texts: list[str]
) -> list[np.ndarray]:
    """Ids of each text (uint32); special-token spellings are an error unless `ordinary`."""
    out = []
    for i, text in zip(idx, texts, strict=True):
        if not ordinary:
            found = tok.find_special(text)
            if found is not None:
                raise SpecialTokenError(f"document {i + 1} contains the special token {found!r}")
        out.append(np.asarray(tok.encode_ordinary(text), dtype=np.uint32))
    return out


def is_val_doc(i: int, val_fraction: float) -> bool:
    """Document i is held out when it crosses a multiple of 1/val_fraction (every k-th doc)."""
    return math.floor((i + 1) * val_fraction + 1e-9) > math.floor(i * val_fraction + 1e-9)


# -- preparation -----------------------------------------------------------------------------


def _sources(cfg: DataConfig, loc: Locations) -> tuple[list[Source], ReadOptions]:
    separator = cfg.doc_separator
    if cfg.dataset in REGISTRY:
        spec = REGISTRY[cfg.dataset]
        sources = [Source(str(find_raw(spec, loc)), "text")]
        separator = separator or spec.doc_separator
    else:
        sources = resolve_sources(cfg.dataset)
    opts = ReadOptions(
        text_field=cfg.text_field,
        doc_separator=separator,
        hf_split=cfg.hf_split,
        hf_config=cfg.hf_config,
    )
    return sources, opts


def _fingerprint(sources: list[Source], tokenizer_id: str, cfg: DataConfig, opts: ReadOptions):
    settings = [
        FORMAT_VERSION,
        tokenizer_id,
        cfg.val_fraction,
        cfg.allow_special_text,
        cfg.shard_tokens,
        opts.text_field,
        opts.doc_separator,
        opts.hf_split,
        opts.hf_config,
    ]
    h = hashlib.sha256(json.dumps(settings).encode())
    for src in sources:
        h.update(f"{src.kind}|{src.location}|{src.fingerprint()}".encode())
    return h.hexdigest()[:16]


def _build_tokenizer(cfg: DataConfig, loc: Locations, docs: Iterator[str]) -> Tokenizer:
    if cfg.tokenizer == "char":
        chars: set[str] = set()
        for doc in docs:
            chars.update(doc)
        if not "".join(chars).strip():
            raise GptlabError(f"no text to train on: {cfg.dataset} is empty; give non-empty text")
        return CharTokenizer(sorted(chars))
    try:
        return resolve_tokenizer(
            cfg.tokenizer,
            data_dir=loc.data_dir,
            tiktoken_cache_dir=loc.tiktoken_cache_dir,
            allow_download=loc.allow_download,
        )
    except ValueError as e:
        raise GptlabError(str(e)) from None


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (half the disk and memory bandwidth), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _tasks(docs: Iterator[str]) -> Iterator[tuple[list[int], list[bool], list[str]]]:
    """Batches of (doc index, is first piece, text) of about TASK_CHARS characters."""
    idx: list[int] = []
    first: list[bool] = []
    texts: list[str] = []
    size = 0
    real_docs = (doc for doc in docs if doc.strip())  # whitespace alone is no document
    for i, doc in enumerate(real_docs):
        bounds = [0, *cut_points(doc, PIECE_CHARS), len(doc)]
        for k in range(len(bounds) - 1):
            piece = doc[bounds[k] : bounds[k + 1]]
            idx.append(i)
            first.append(k == 0)
            texts.append(piece)
            size += len(piece)
            if size >= TASK_CHARS:
                yield idx, first, texts
                idx, first, texts, size = [], [], [], 0
    if texts:
        yield idx, first, texts


def prepare(
    cfg: DataConfig,
    loc: Locations,
    out_dir: Path | None = None,
    progress: bool = False,
) -> Path:
    """Prepare `cfg.dataset` with `cfg.tokenizer` unless a fresh copy exists; returns its dir."""
    as_path = Path(cfg.dataset).expanduser()
    if cfg.dataset not in REGISTRY and is_prepared_dir(as_path):
        return as_path  # already a prepared directory: use as is
    sources, opts = _sources(cfg, loc)
    tok: Tokenizer | None = None
    if cfg.tokenizer == "char":
        tokenizer_id = "char"  # built from the corpus, so the sources fingerprint covers it
    else:
        tok = _build_tokenizer(cfg, loc, iter(()))
        tokenizer_id = tok.fingerprint()
    if out_dir is None:
        out = default_out_dir(cfg.dataset, loc, _tokenizer_label(cfg.tokenizer, tok))
    else:
        out = Path(out_dir)
    fp = _fingerprint(sources, tokenizer_id, cfg, opts)
    if is_prepared_dir(out) and load_meta(out).get("fingerprint") == fp:
        log.info("using prepared data in %s", out)
        return out
    if out.exists() and not is_prepared_dir(out) and any(out.iterdir()):
        raise GptlabError(f"{out} exists and is not a prepared-data folder; choose another --out")
    if tok is None:
        tok = _build_tokenizer(cfg, loc, iter_documents(sources, opts))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-tmp-"))
    try:
        t0 = time.perf_counter()
        tok_files = [p.name for p in tok.save(tmp)]
        splits = _write_splits(tmp, tok, cfg, sources, opts, progress)
        seconds = time.perf_counter() - t0
        total = splits["train"]["tokens"] + splits["val"]["tokens"]
        meta = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fp,
            "dataset": cfg.dataset,
            "sources": [f"{s.kind}:{s.location}" for s in sources],
            "tokenizer": tok.kind,
            "tokenizer_fingerprint": tok.fingerprint(),
            "tokenizer_files": tok_files,
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "dtype": token_dtype(tok.vocab_size).name,
            "tokens": {k: v["tokens"] for k, v in splits.items()},
            "docs": {k: v["docs"] for k, v in splits.items()},
            "splits": splits,
            "val_fraction": cfg.val_fraction,
            "prepare_seconds": round(seconds, 3),
            "tokens_per_s": round(total / max(seconds, 1e-9)),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}-stale-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "tokenized %s in %.1fs: %s tokens/s -> %s",
        cfg.dataset,
        meta["prepare_seconds"],
        f"{meta['tokens_per_s']:,}",
        out,
    )
    return out


def _source_bytes(sources: list[Source]) -> int | None:
    if any(s.kind == "hf" for s in sources):
        return None
    return sum(Path(s.location).stat().st_size for s in sources)


def _write_splits(
    tmp: Path,
    tok: Tokenizer,
    cfg: DataConfig,
    sources: list[Source],
    opts: ReadOptions,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    from tqdm import tqdm

    dtype = token_dtype(tok.vocab_size)
    writers = {s: ShardWriter(tmp, s, dtype, cfg.shard_tokens) for s in ("train", "val")}
    bos = np.asarray([tok.bos_id] if tok.bos_id is not None else [], dtype=np.uint32)
    pool = None
    size = _source_bytes(sources)
    workers = cfg.num_workers if size is None or size >= POOL_MIN_BYTES else 1
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")  # safe with threads and torch loaded
        pool = ctx.Pool(workers, _init_worker, (str(tmp), cfg.allow_special_text))
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=f"tokenize ({workers} worker{'s' * (workers > 1)})",
        disable=None if progress else True,  # None: only on a terminal
    )
    n_docs = 0
    try:
        tasks = _tasks(iter_documents(sources, opts))
        if pool is not None:
            encoded = pool.imap(_encode_batch_task, tasks, chunksize=1)
        else:
            encoded = (_encode_task_local(tok, cfg.allow_special_text, t) for t in tasks)
        for doc_idx, first, ids_list, n_bytes in encoded:
            for i, is_first, ids in zip(doc_idx, first, ids_list, strict=True):
                writer = writers["val" if is_val_doc(i, cfg.val_fraction) else "train"]
                if is_first:
                    n_docs += 1
                    if len(bos):
                        ids = np.concatenate([bos, ids])
                writer.write(ids, new_doc=is_first)
            bar.update(n_bytes)
    except SpecialTokenError as e:
        raise GptlabError(
            f"{e} of {cfg.dataset}; clean the data, or pass --data.allow_special_text to "
            "encode such text as ordinary characters"
        ) from None
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    if n_docs == 0:
        raise GptlabError(f"no text to train on: {cfg.dataset} has no non-empty documents")
    if not writers["val"].shards:  # too few documents: the tail of the last one validates
        train = writers["train"]
        n = train.last_doc_length()
        keep = int(n * (1 - cfg.val_fraction))
        if keep < 1 or keep >= n:
            raise GptlabError(
                f"the last document has {n} tokens, too few to split into train and val; "
                "give more text"
            )
        tail = train.pop_tail(n - keep).astype(np.uint32)
        writers["val"].write(np.concatenate([bos, tail]) if len(bos) else tail, new_doc=True)
    return {split: w.finish() for split, w in writers.items()}


Task = tuple[list[int], list[bool], list[str]]


def _encode_batch_task(task: Task):
    idx, first, texts = task
    return idx, first, _encode_texts(idx, texts), sum(len(t.encode("utf-8")) for t in texts)


def _encode_task_local(tok: Tokenizer, ordinary: bool, task: Task):
    idx, first, texts = task
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return idx, first, _encode_with(tok, ordinary, idx, texts), n_bytes
