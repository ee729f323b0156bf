import json

import numpy as np
import pytest
import torch
from tests.conftest import needs_shakespeare

from gptlab.data.loader import RandomWindowLoader, fixed_batches
from gptlab.data.prepare import load_tokenizer, open_split, prepare
from gptlab.errors import GptlabError


def test_prepare_file_split_and_meta(text_file, text, locations):
    out = prepare(str(text_file), "char", 0.1, locations)
    meta = json.loads((out / "meta.json").read_text())
    train, val = open_split(out, "train"), open_split(out, "val")
    assert train.dtype == np.uint16 and val.dtype == np.uint16
    assert len(train) + len(val) == len(text) and len(train) == int(len(text) * 0.9)
    assert meta["vocab_size"] == len(set(text))
    tok = load_tokenizer(out)
    assert tok.decode(np.concatenate([train, val]).tolist()) == text


def test_prepare_reuses_fresh_and_rebuilds_stale(text_file, locations):
    out = prepare(str(text_file), "char", 0.1, locations)
    mtime = (out / "train.bin").stat().st_mtime_ns
    assert prepare(str(text_file), "char", 0.1, locations) == out
    assert (out / "train.bin").stat().st_mtime_ns == mtime  # reused
    text_file.write_text("a different, longer text " * 100)
    prepare(str(text_file), "char", 0.1, locations)
    assert len(open_split(out, "train")) == int(len("a different, longer text " * 100) * 0.9)


def test_prepare_folder(tmp_path, locations):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text("first book " * 50)
    (folder / "b.txt").write_text("second book " * 50)
    out = prepare(str(folder), "char", 0.1, locations)
    tok = load_tokenizer(out)
    full = tok.decode(np.concatenate([open_split(out, "train"), open_split(out, "val")]).tolist())
    assert full == "first book " * 50 + "\n\n" + "second book " * 50


def test_loader_shapes_dtypes_and_shift(text_file, locations):
    out = prepare(str(text_file), "char", 0.1, locations)
    tokens = open_split(out, "train")
    loader = RandomWindowLoader(tokens, batch_size=4, seq_len=16, seed=0)
    x, y = loader.next_batch()
    assert x.shape == (4, 16) and y.shape == (4, 16)
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
    # every row is a real window of the token stream
    t = torch.from_numpy(tokens.astype(np.int64))
    row = torch.cat([x[0], y[0, -1:]])
    starts = [i for i in range(len(t) - 16) if torch.equal(t[i : i + 17], row)]
    assert starts


def test_loader_is_deterministic_and_resumable(text_file, locations):
    tokens = open_split(prepare(str(text_file), "char", 0.1, locations), "train")
    a = RandomWindowLoader(tokens, 2, 8, seed=3)
    a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(3)]
    b = RandomWindowLoader(tokens, 2, 8, seed=99)
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, [b.next_batch() for _ in range(3)], strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    f1 = fixed_batches(tokens, 2, 2, 8, seed=5)
    f2 = fixed_batches(tokens, 2, 2, 8, seed=5)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(f1, f2, strict=True))


def test_loader_rejects_text_shorter_than_a_window():
    with pytest.raises(ValueError, match="fewer than one training window"):
        RandomWindowLoader(np.zeros(10, dtype=np.uint16), 2, 16, seed=0)


@needs_shakespeare
def test_registered_shakespeare_found_in_data_dir(locations):
    out = prepare("shakespeare_char", "char", 0.1, locations)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == 65
    assert meta["tokens"] == {"train": 1_003_854, "val": 111_540}  # nanoGPT's split


def test_missing_registered_dataset_offline(tmp_path):
    from gptlab.data.registry import Locations

    loc = Locations(
        cache_dir=tmp_path / "cache", data_dir=tmp_path / "nothing", allow_download=False
    )
    with pytest.raises(GptlabError, match="tinyshakespeare/input.txt"):
        prepare("shakespeare_char", "char", 0.1, loc)


def test_truncated_split_is_detected(text_file, locations):
    out = prepare(str(text_file), "char", 0.1, locations)
    data = (out / "val.bin").read_bytes()
    (out / "val.bin").write_bytes(data[:-2])
    with pytest.raises(GptlabError, match="re-run gptlab prepare"):
        open_split(out, "val")
