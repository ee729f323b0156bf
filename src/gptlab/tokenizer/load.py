"""Find a tokenizer by name or directory: what prepare, train and sample call.

`load_tokenizer(dir)` reads any saved tokenizer (tokenizer.json's "kind" picks the class), so a
prepared-data or checkpoint directory carries its own. `resolve_tokenizer(name_or_dir)` also
knows the pretrained names. "char" is not resolvable: a character vocabulary is the set of
characters of a corpus, so `gptlab prepare` builds it from the data.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.tokenizer.base import Tokenizer, read_config
from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.hf import HFTokenizer
from gptlab.tokenizer.pretrained import PRETRAINED, load_pretrained

LOADERS = {"char": CharTokenizer.load, "bpe": BPETokenizer.load, "hf": HFTokenizer.load}


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in `directory`; ValueError with the fix if its files are unusable."""
    kind = read_config(directory).get("kind")
    if kind not in LOADERS:
        raise ValueError(
            f"{Path(directory) / 'tokenizer.json'} has unknown kind {kind!r} (expected one of "
            f"{', '.join(LOADERS)}); re-create the tokenizer"
        )
    return LOADERS[kind](directory)


def resolve_tokenizer(
    name_or_dir: str,
    *,
    data_dir: Path | None,
    tiktoken_cache_dir: Path | None = None,
    allow_download: bool = False,
) -> Tokenizer:
    """A pretrained encoding ('gpt2', 'cl100k_base', 'o200k_base') or a saved tokenizer dir."""
    if name_or_dir in PRETRAINED:
        return load_pretrained(
            name_or_dir,
            data_dir=data_dir,
            tiktoken_cache_dir=tiktoken_cache_dir,
            allow_download=allow_download,
        )
    if name_or_dir == "char":
        raise ValueError(
            "the char tokenizer has no fixed vocabulary: it is built from the corpus by "
            "gptlab prepare (--tokenizer char); name a BPE tokenizer here"
        )
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return load_tokenizer(path)
    if path.exists():
        raise ValueError(f"{name_or_dir} is a file; give the directory that holds tokenizer.json")
    if "/" in name_or_dir or name_or_dir.startswith("."):
        raise GptlabError(
            f"tokenizer directory {name_or_dir} does not exist; give a directory written by "
            "gptlab tokenizer train"
        )
    raise ValueError(
        f"unknown tokenizer {name_or_dir!r}; give one of {', '.join(PRETRAINED)} or a directory "
        "written by gptlab tokenizer train"
    )
