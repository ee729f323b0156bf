"""Registered datasets: where each one's raw text lives and how to fetch it.

Lookup order for a registered dataset: the local data folder (GPTLAB_DATA_DIR, read by the CLI
and passed in as `Locations.data_dir`), then the user cache, then a one-time download from the
public source into the cache, verified by sha256. Offline with no copy, the error says exactly
where to put the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from gptlab.errors import GptlabError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    relpath: str  # path of the raw text under a data folder or the cache
    url: str | None  # None: not downloadable as one file; the user provides a local copy
    sha256: str
    doc_separator: str = ""  # regex between documents inside the file ("" = one document)
    how_to_get: str = ""  # for url None: where the file comes from


REGISTRY = {
    "shakespeare_char": DatasetSpec(
        name="shakespeare_char",
        relpath="tinyshakespeare/input.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    # 14 public-domain books (NLTK's Gutenberg selection) joined into one clean UTF-8 file;
    # each book begins with a "[Title by Author Year]" line, which splits the documents.
    "gutenberg": DatasetSpec(
        name="gutenberg",
        relpath="gutenberg_nltk/corpus.txt",
        url=None,
        sha256="8e86f95e56c5504fa71c996aa450787f4f10accf164c05e38e75704427d8322d",
        doc_separator=r"\n\n(?=\[[^\]\n]+(?: \d{4}|Bible)\] ?\n)",
        how_to_get=(
            "it is the 14 books of nltk_data/corpora/gutenberg.zip as UTF-8 with LF line ends, "
            "joined by blank lines"
        ),
    ),
}


# Conversation data for chat finetuning (gptlab sft --data NAME), pinned to the commits the
# shared copies were taken from; "chat_sft" is the worked example's training set.
_FASTCHAT = (
    "https://raw.githubusercontent.com/lm-sys/FastChat/0e6d3e4beaab66f4d3f93db72541a4abab8af28d"
)
_SELF_INSTRUCT = "https://raw.githubusercontent.com/yizhongw/self-instruct/0b26ccaa415992100fa32df62d41b994cf928e23"
CHAT_FILES = {
    "fastchat_dummy": DatasetSpec(
        name="fastchat_dummy",
        relpath="chat_sft/fastchat_dummy_conversation.json",
        url=f"{_FASTCHAT}/data/dummy_conversation.json",
        sha256="534c5a1079f2eb61ff96633330ce87c4743f5b6d5b1691b44a65920473540470",
    ),
    "self_instruct_seed": DatasetSpec(
        name="self_instruct_seed",
        relpath="chat_sft/self_instruct_seed_tasks.jsonl",
        url=f"{_SELF_INSTRUCT}/data/seed_tasks.jsonl",
        sha256="7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48",
    ),
    "self_instruct_eval": DatasetSpec(
        name="self_instruct_eval",
        relpath="chat_sft/self_instruct_user_oriented_instructions.jsonl",
        url=f"{_SELF_INSTRUCT}/human_eval/user_oriented_instructions.jsonl",
        sha256="81d60a117db495cecedecd9193504fd07c5b5a42f6699ef6b0f9da10fc22f42e",
    ),
}
CHAT_GROUPS = {"chat_sft": ("fastchat_dummy", "self_instruct_seed")}


def resolve_chat_data(entries: list[str], loc: Locations) -> list[str]:
    """Conversation files for sft.data entries: a registered name (CHAT_FILES, CHAT_GROUPS)
    becomes its local or downloaded file; paths and hf:NAME pass through."""
    out: list[str] = []
    for entry in entries:
        names = CHAT_GROUPS.get(entry, (entry,) if entry in CHAT_FILES else ())
        if not names:
            out.append(entry)
        for name in names:
            out.append(str(find_raw(CHAT_FILES[name], loc)))
    return out


@dataclasses.dataclass(frozen=True)
class Locations:
    """Where raw data may already be (data_dir) and where derived files go (cache_dir)."""

    cache_dir: Path
    data_dir: Path | None = None
    allow_download: bool = True
    tiktoken_cache_dir: Path | None = None  # tiktoken's own cache (TIKTOKEN_CACHE_DIR)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str) -> None:
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, os.fdopen(fd, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                for chunk in iter(lambda: r.read(1 << 16), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        got = sha256_file(Path(tmp))
        if got != sha256:
            raise GptlabError(f"download of {url} has sha256 {got}, expected {sha256}; try again")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def find_raw(spec: DatasetSpec, loc: Locations) -> Path:
    """Path of the dataset's raw text, downloading it into the cache on first use."""
    candidates = []
    if loc.data_dir is not None:
        candidates.append(loc.data_dir / spec.relpath)
    cached = loc.cache_dir / "raw" / spec.relpath
    candidates.append(cached)
    for path in candidates:
        if path.is_file():
            return path
    if spec.url is None:
        raise GptlabError(
            f"dataset {spec.name!r} not found at {' or '.join(map(str, candidates))} and cannot "
            f"be downloaded as one file ({spec.how_to_get}); put {spec.relpath} under "
            "GPTLAB_DATA_DIR"
        )
    if not loc.allow_download:
        raise GptlabError(
            f"dataset {spec.name!r} not found at {' or '.join(map(str, candidates))} and "
            f"downloads are off (GPTLAB_OFFLINE); put {spec.relpath} under GPTLAB_DATA_DIR or "
            f"the file at {cached}"
        )
    try:
        _download(spec.url, cached, spec.sha256)
    except OSError as e:  # URLError is an OSError: offline, DNS failure, refused, timeout
        raise GptlabError(
            f"dataset {spec.name!r} is not available locally and downloading {spec.url} failed "
            f"({getattr(e, 'reason', e)}); put the file at {cached} "
            f"or set GPTLAB_DATA_DIR to a folder containing {spec.relpath}"
        ) from None
    return cached
