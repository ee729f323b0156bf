"""Tokenizer fixtures: the shared GPT-2 files, tiktoken's own gpt2 encoding (offline), and small
trained tokenizers."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from tests.conftest import SHARED, shakespeare_path

from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.train import train_bpe_tokenizer


def gpt2_files() -> Path | None:
    if not SHARED:
        return None
    folder = Path(SHARED) / "gpt2_tokenizer"
    return folder if (folder / "encoder.json").is_file() else None


needs_gpt2 = pytest.mark.skipif(
    gpt2_files() is None, reason="set GPTLAB_DATA_DIR to the shared data folder"
)


@pytest.fixture(scope="session")
def tiktoken_gpt2(tmp_path_factory: pytest.TempPathFactory):
    """tiktoken.get_encoding('gpt2') from a private copy of the shared cache: no download."""
    folder = gpt2_files()
    if folder is None:
        pytest.skip("set GPTLAB_DATA_DIR to the shared data folder")
    import tiktoken

    cache = tmp_path_factory.mktemp("tiktoken") / "cache"
    shutil.copytree(folder / "tiktoken_cache", cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="session")
def gpt2_tok() -> BPETokenizer:
    from gptlab.tokenizer.pretrained import load_pretrained

    folder = gpt2_files()
    if folder is None:
        pytest.skip("set GPTLAB_DATA_DIR to the shared data folder")
    return load_pretrained("gpt2", data_dir=folder.parent)


@pytest.fixture(scope="session")
def shakespeare() -> str:
    """All of TinyShakespeare (1.1 MB) if the data folder is set, else ~1 MB of made-up words
    with a Zipf-like frequency, enough for thousands of merges."""
    path = shakespeare_path()
    if path is not None:
        return path.read_text(encoding="utf-8")
    rng = random.Random(0)
    syllables = [c + v for c in "bcdfghklmnprstvw" for v in "aeiou"] + ["th", "sh", "ng"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    zipf = [1 / (rank + 1) for rank in range(len(words))]
    lines = []
    for _ in range(20_000):
        line = " ".join(rng.choices(words, weights=zipf, k=rng.randint(2, 12)))
        lines.append(line.capitalize() + rng.choice([",", ".", ";", "!", "?", ":"]))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def shakespeare_tok(shakespeare: str) -> BPETokenizer:
    """A 1024-id BPE (gpt4 pattern, default special tokens) trained on Shakespeare."""
    return train_bpe_tokenizer([shakespeare], 1024, "gpt4")
