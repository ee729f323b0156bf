"""Shared fixtures: tiny configs, a small text corpus, isolated cache dirs, torch-state hygiene."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from gptlab.data.registry import Locations
from gptlab.model.config import ModelConfig
from gptlab.presets import tiny

SHARED = os.environ.get("GPTLAB_DATA_DIR")
if SHARED:  # absolute, so tests that chdir (cli_env) still find it: the README gives ../shared/data
    SHARED = os.environ["GPTLAB_DATA_DIR"] = os.path.abspath(SHARED)


def shakespeare_path() -> Path | None:
    if not SHARED:
        return None
    p = Path(SHARED) / "tinyshakespeare" / "input.txt"
    return p if p.is_file() else None


needs_shakespeare = pytest.mark.skipif(
    shakespeare_path() is None, reason="set GPTLAB_DATA_DIR to the shared data folder"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip themselves where no CUDA device is visible (pyproject.toml)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is false)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _torch_hygiene():
    """Fixed seed per test, and restore the global torch state a test may change."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    rng = torch.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_rng_state(rng)


@pytest.fixture
def model_cfg() -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=40)


@pytest.fixture
def text() -> str:
    """~10 KB of English-like text: Shakespeare if the data folder is set, else generated."""
    path = shakespeare_path()
    if path is not None:
        return path.read_text(encoding="utf-8")[:10_000]
    words = [
        "the",
        "king",
        "and",
        "queen",
        "of",
        "denmark",
        "speak",
        "to",
        "their",
        "court",
        "about",
        "love",
        "war",
        "and",
        "death",
    ]
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(words), (2000,), generator=g).tolist()
    return " ".join(words[i] for i in idx)[:10_000]


@pytest.fixture
def text_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def locations(tmp_path: Path) -> Locations:
    """An empty per-test cache; the shared data folder if set; never any download."""
    return Locations(
        cache_dir=tmp_path / "cache",
        data_dir=Path(SHARED) if SHARED else None,
        allow_download=False,
    )


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Environment for in-process CLI calls: private cache, offline, cwd in tmp_path."""
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTLAB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_run(text_file: Path, tmp_path: Path):
    """The `tiny` preset pointed at the small corpus and a run dir under tmp_path."""
    cfg = tiny()
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, dataset=str(text_file)),
        train=dataclasses.replace(cfg.train, out_dir=str(tmp_path / "run")),
    )
