"""Text -> token memmaps: `train.bin`, `val.bin` and `meta.json` in one prepared directory.

Tokenizing once up front (nanoGPT's approach) means training reads uint16 ids straight from a
memory map: no tokenizer on the hot path and no corpus held in RAM. The split is by position:
the first (1 - val_fraction) of the tokens train, the tail validates, as in nanoGPT.
`meta.json` records a fingerprint of the sources and settings; a stale directory is rebuilt and a
fresh one reused. Directories are written to a temporary name and renamed into place, so an
interrupted prepare never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data.registry import REGISTRY, Locations, find_raw
from gptlab.errors import GptlabError
from gptlab.tokenizer.char import CharTokenizer

log = logging.getLogger(__name__)

META = "meta.json"
FORMAT_VERSION = 1


def _source_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise GptlabError(f"folder {path} holds no files; put UTF-8 .txt files in it")
        return files
    raise GptlabError(f"dataset {str(path)!r} is neither a registered name nor an existing path")


def read_text(files: list[Path]) -> str:
    """Concatenate UTF-8 files (blank line between files); non-UTF-8 bytes are an error."""
    parts = []
    for f in files:
        data = f.read_bytes()
        try:
            parts.append(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise GptlabError(
                f"{f} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                f"convert it, e.g. iconv -f latin1 -t utf-8 {f.name} > fixed.txt"
            ) from None
    text = "\n\n".join(parts)
    if not text.strip():
        raise GptlabError(
            f"no text to train on: {', '.join(map(str, files))} is empty; give a non-empty file"
        )
    return text


def _fingerprint(files: list[Path], tokenizer: str, val_fraction: float) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, tokenizer, val_fraction]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def default_out_dir(dataset: str, loc: Locations) -> Path:
    if dataset in REGISTRY:
        return loc.cache_dir / "prepared" / dataset
    src = Path(dataset).expanduser().resolve()
    tag = hashlib.sha1(str(src).encode()).hexdigest()[:8]
    return loc.cache_dir / "prepared" / f"{src.stem or 'data'}-{tag}"


def is_prepared_dir(path: Path) -> bool:
    return (path / META).is_file() and (path / "train.bin").is_file()


def load_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GptlabError(
            f"prepared data {directory} has no readable {META} ({e}); re-run gptlab prepare"
        ) from None
    return meta


def prepare(
    dataset: str,
    tokenizer: str,
    val_fraction: float,
    loc: Locations,
    out_dir: Path | None = None,
) -> Path:
    """Prepare `dataset` (registered name, text file or folder) unless a fresh copy exists."""
    as_path = Path(dataset).expanduser()
    if dataset not in REGISTRY and is_prepared_dir(as_path):
        return as_path  # already a prepared directory: use as is
    registered = dataset in REGISTRY
    files = [find_raw(REGISTRY[dataset], loc)] if registered else _source_files(as_path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(dataset, loc)
    fp = _fingerprint(files, tokenizer, val_fraction)
    if is_prepared_dir(out) and load_meta(out).get("fingerprint") == fp:
        log.info("using prepared data in %s", out)
        return out
    if out.exists() and not (out / META).is_file() and any(out.iterdir()):
        raise GptlabError(f"{out} exists and is not a prepared-data folder; choose another --out")

    text = read_text(files)
    tok = CharTokenizer.train(text)
    ids = np.array(tok.encode(text), dtype=np.uint16)  # (N,)
    n_val = len(ids) - int(len(ids) * (1 - val_fraction))  # nanoGPT: first 90% train
    if len(ids) - n_val < 1:
        raise GptlabError(f"text of {len(ids)} tokens is too short to split into train and val")
    splits = {"train": ids[: len(ids) - n_val], "val": ids[len(ids) - n_val :]}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-tmp-"))
    try:
        for split, arr in splits.items():
            arr.tofile(tmp / f"{split}.bin")
        tok.save(tmp)
        meta = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fp,
            "dataset": dataset,
            "sources": [str(f.resolve()) for f in files],
            "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size,
            "dtype": "uint16",
            "tokens": {k: int(len(v)) for k, v in splits.items()},
            "val_fraction": val_fraction,
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
    log.info("prepared %s: %s tokens, vocab %d -> %s", dataset, meta["tokens"], tok.vocab_size, out)
    return out


def open_split(directory: Path, split: str) -> np.ndarray:
    """Memory-map one split, checking its size against meta.json (catches truncated files)."""
    meta = load_meta(directory)
    path = directory / f"{split}.bin"
    expected = meta["tokens"][split]
    dtype = np.dtype(meta["dtype"])
    size = path.stat().st_size if path.is_file() else -1
    if size != expected * dtype.itemsize:
        raise GptlabError(
            f"{path} has {size} bytes but meta.json expects {expected} tokens "
            f"({expected * dtype.itemsize} bytes); delete {directory} and re-run gptlab prepare"
        )
    return np.memmap(path, dtype=dtype, mode="r")


def load_tokenizer(directory: Path) -> CharTokenizer:
    return CharTokenizer.load(directory)
