"""gptlab.data.prepare: sources -> shards, document index, split, fingerprint, bad input."""

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import SHARED, needs_shakespeare

from gptlab.data import prepare as prep
from gptlab.data.config import DataConfig
from gptlab.data.prepare import cut_points, is_val_doc, prepare, token_dtype
from gptlab.data.shards import open_split
from gptlab.errors import GptlabError
from gptlab.tokenizer.load import load_tokenizer

needs_gpt2 = pytest.mark.skipif(
    not SHARED or not (Path(SHARED) / "gpt2_tokenizer" / "encoder.json").is_file(),
    reason="set GPTLAB_DATA_DIR to the shared data folder (GPT-2 tokenizer files)",
)


def cfg(dataset, **kw) -> DataConfig:
    return DataConfig(dataset=str(dataset), num_workers=kw.pop("num_workers", 1), **kw)


def all_tokens(out: Path, split: str) -> np.ndarray:
    data = open_split(out, split)
    return np.concatenate([np.asarray(s) for s in data.shards])


def documents(out: Path, split: str) -> list[np.ndarray]:
    data = open_split(out, split)
    return [np.asarray(data.shards[s][a:b]) for s, a, b in data.docs]


def test_single_document_gives_nanogpt_split(text_file, text, locations):
    out = prepare(cfg(text_file), locations)
    meta = json.loads((out / "meta.json").read_text())
    train, val = all_tokens(out, "train"), all_tokens(out, "val")
    assert train.dtype == np.uint16
    assert len(train) == int(len(text) * 0.9) and len(train) + len(val) == len(text)
    assert meta["vocab_size"] == len(set(text)) and meta["bos_id"] is None
    assert meta["docs"] == {"train": 1, "val": 1}
    tok = load_tokenizer(out)
    assert tok.decode(np.concatenate([train, val]).tolist()) == text


def test_reuses_fresh_and_rebuilds_stale(text_file, locations):
    out = prepare(cfg(text_file), locations)
    mtime = (out / "train_00000.bin").stat().st_mtime_ns
    assert prepare(cfg(text_file), locations) == out
    assert (out / "train_00000.bin").stat().st_mtime_ns == mtime  # reused
    text_file.write_text("a different, longer text " * 100)
    prepare(cfg(text_file), locations)
    assert open_split(out, "train").n_tokens == int(len("a different, longer text " * 100) * 0.9)
    prepare(cfg(text_file, val_fraction=0.2), locations)  # a setting changes the fingerprint
    assert open_split(out, "train").n_tokens == int(len("a different, longer text " * 100) * 0.8)


def test_folder_documents_split_every_kth(tmp_path, locations):
    folder = tmp_path / "books"
    folder.mkdir()
    texts = [f"book number {i} " * (20 + i) for i in range(12)]
    for i, t in enumerate(texts):
        (folder / f"{i:02d}.txt").write_text(t)
    out = prepare(cfg(folder, val_fraction=0.25), locations)
    tok = load_tokenizer(out)
    val_idx = [i for i in range(12) if is_val_doc(i, 0.25)]
    assert val_idx == [3, 7, 11]
    assert [tok.decode(d.tolist()) for d in documents(out, "val")] == [texts[i] for i in val_idx]
    train = [texts[i] for i in range(12) if i not in val_idx]
    assert [tok.decode(d.tolist()) for d in documents(out, "train")] == train


def test_doc_separator_splits_a_file(tmp_path, locations):
    f = tmp_path / "c.txt"
    f.write_text("\n===\n".join(f"doc {i} text" for i in range(10)))
    out = prepare(cfg(f, doc_separator=r"\n===\n"), locations)
    tok = load_tokenizer(out)
    docs = documents(out, "train") + documents(out, "val")
    assert sorted(tok.decode(d.tolist()) for d in docs) == sorted(
        f"doc {i} text" for i in range(10)
    )


def test_jsonl_field_and_glob(tmp_path, locations):
    for part in range(2):
        rows = [{"text": f"part {part} row {i}", "id": i} for i in range(5)]
        (tmp_path / f"p{part}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = prepare(cfg(tmp_path / "*.jsonl"), locations)
    tok = load_tokenizer(out)
    docs = documents(out, "train") + documents(out, "val")
    assert len(docs) == 10
    assert tok.decode(documents(out, "val")[0].tolist()) == "part 1 row 4"  # doc index 9
    with pytest.raises(GptlabError, match="no field 'body' .*--data.text_field"):
        prepare(cfg(tmp_path / "p0.jsonl", text_field="body"), locations)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(GptlabError, match=r"bad.jsonl:2 is not valid JSON"):
        prepare(cfg(tmp_path / "bad.jsonl"), locations)


def test_parquet_column(tmp_path, locations):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"content": [f"parquet row {i}" for i in range(20)], "n": list(range(20))})
    pq.write_table(table, tmp_path / "d.parquet")
    out = prepare(cfg(tmp_path / "d.parquet", text_field="content"), locations)
    assert open_split(out, "train").n_docs + open_split(out, "val").n_docs == 20
    with pytest.raises(GptlabError, match="no column 'text' .*it has: content, n"):
        prepare(cfg(tmp_path / "d.parquet"), locations)


def test_hf_dataset_from_disk(tmp_path, locations):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": [f"hf row {i}" for i in range(10)]})
    ds.save_to_disk(str(tmp_path / "hfds"))
    out = prepare(cfg(tmp_path / "hfds"), locations)
    tok = load_tokenizer(out)
    assert tok.decode(documents(out, "val")[0].tolist()) == "hf row 9"


def test_empty_corpus_and_missing_path(tmp_path, locations):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(GptlabError, match="no text to train on"):
        prepare(cfg(tmp_path / "empty.txt"), locations)
    with pytest.raises(GptlabError, match="neither a registered name nor an existing path"):
        prepare(cfg(tmp_path / "nope.txt"), locations)
    assert not list((tmp_path / "cache" / "prepared").glob("*"))  # nothing half-written


def test_shards_close_at_document_ends(tmp_path, locations):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i:02d}.txt").write_text(f"document {i} " * 5)
    out = prepare(cfg(folder, shard_tokens=100), locations)
    data = open_split(out, "train")
    assert len(data.shards) > 1
    for s, a, b in data.docs:  # every document lies inside one shard
        assert 0 <= a < b <= len(data.shards[s])
    assert data.n_docs == 27  # 3 of 30 go to val


def test_token_dtype():
    assert token_dtype(65) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(200_019) == np.uint32


def test_val_rule_fraction():
    assert sum(is_val_doc(i, 0.1) for i in range(1000)) == 100
    assert sum(is_val_doc(i, 0.05) for i in range(1000)) == 50


def test_truncated_and_corrupt_shards_are_detected(text_file, locations):
    out = prepare(cfg(text_file), locations)
    shard = out / "val_00000.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])
    with pytest.raises(GptlabError, match="re-run gptlab prepare"):
        open_split(out, "val")
    shard.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, one bit flipped
    with pytest.raises(GptlabError, match="sha256"):
        open_split(out, "val")
    shard.write_bytes(data)
    np.save(out / "val_00000.docs.npy", np.array([5, 3]))
    with pytest.raises(GptlabError, match="document index"):
        open_split(out, "val")


@needs_shakespeare
def test_registered_shakespeare_found_in_data_dir(locations):
    out = prepare(DataConfig(num_workers=1), locations)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == 65
    assert meta["tokens"] == {"train": 1_003_854, "val": 111_540}  # nanoGPT's split


def test_missing_registered_dataset_offline(tmp_path):
    from gptlab.data.registry import Locations

    loc = Locations(
        cache_dir=tmp_path / "cache", data_dir=tmp_path / "nothing", allow_download=False
    )
    with pytest.raises(GptlabError, match="tinyshakespeare/input.txt"):
        prepare(DataConfig(num_workers=1), loc)
    with pytest.raises(GptlabError, match="gutenberg_nltk/corpus.txt under GPTLAB_DATA_DIR"):
        prepare(DataConfig(dataset="gutenberg", num_workers=1), loc)


# -- BPE-tokenized preparation (GPT-2 files from the shared data folder) -------------------


@needs_gpt2
def test_gpt2_documents_start_with_bos(tmp_path, locations):
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = [f"Document {i}: héllo wörld, 123 🙂\n" * (i + 1) for i in range(10)]
    for i, t in enumerate(texts):
        (folder / f"{i}.txt").write_text(t)
    out = prepare(cfg(folder, tokenizer="gpt2"), locations)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == 50257 and meta["bos_id"] == 50256
    tok = load_tokenizer(out)
    docs = documents(out, "train")
    assert all(d[0] == 50256 for d in docs)
    assert tok.decode(docs[0][1:].tolist()) == texts[0]


@needs_gpt2
def test_special_text_refused_unless_allowed(tmp_path, locations):
    f = tmp_path / "s.txt"
    f.write_text("ordinary text <|endoftext|> more text " * 20)
    with pytest.raises(GptlabError, match="document 1 contains the special token.*allow_special"):
        prepare(cfg(f, tokenizer="gpt2"), locations)
    assert not list((tmp_path / "cache" / "prepared").glob("*"))  # nothing half-written
    out = prepare(cfg(f, tokenizer="gpt2", allow_special_text=True), locations)
    tok = load_tokenizer(out)
    ids = all_tokens(out, "train")
    assert 50256 not in ids[1:].tolist()  # only the BOS: the text stayed text
    assert tok.decode(ids[1:].tolist()).startswith("ordinary text <|endoftext|>")


@needs_gpt2
def test_cut_pieces_encode_like_the_whole(text):
    tok = load_tokenizer_gpt2()
    cuts = cut_points(text, 200)
    assert len(cuts) > 10
    bounds = [0, *cuts, len(text)]
    pieces = [tok.encode_ordinary(text[a:b]) for a, b in pairwise(bounds)]
    assert sum(pieces, []) == tok.encode_ordinary(text)
    awkward = "Hello  world!\n\n  Tabs\t\tand   spaces   ... 'quoted' don't 12345 x   \n" * 30
    bounds = [0, *cut_points(awkward, 50), len(awkward)]
    pieces = [tok.encode_ordinary(awkward[a:b]) for a, b in pairwise(bounds)]
    assert sum(pieces, []) == tok.encode_ordinary(awkward)


def load_tokenizer_gpt2():
    from gptlab.tokenizer.load import resolve_tokenizer

    return resolve_tokenizer("gpt2", data_dir=Path(SHARED))


@needs_gpt2
@pytest.mark.slow
def test_two_workers_write_the_same_shards_as_one(text_file, tmp_path, locations, monkeypatch):
    monkeypatch.setattr(prep, "POOL_MIN_BYTES", 0)  # use the pool even for a small file
    monkeypatch.setattr(prep, "PIECE_CHARS", 500)  # cut the document into pieces
    monkeypatch.setattr(prep, "TASK_CHARS", 1500)  # and spread them over several tasks
    one = prepare(cfg(text_file, tokenizer="gpt2"), locations, out_dir=tmp_path / "one")
    two = prepare(
        cfg(text_file, tokenizer="gpt2", num_workers=2), locations, out_dir=tmp_path / "two"
    )
    for split in ("train", "val"):
        assert np.array_equal(all_tokens(one, split), all_tokens(two, split))
    tok = load_tokenizer(one)
    assert (
        all_tokens(one, "train")[1:].tolist()
        == tok.encode_ordinary(text_file.read_text())[: open_split(one, "train").n_tokens - 1]
    )


@needs_gpt2
def test_each_tokenizer_gets_its_own_cache_folder(text_file, locations):
    char = prepare(cfg(text_file), locations)
    gpt2 = prepare(cfg(text_file, tokenizer="gpt2"), locations)
    assert char != gpt2 and gpt2.name.endswith("-gpt2")
    assert prepare(cfg(text_file), locations) == char  # still there, reused
    assert json.loads((char / "meta.json").read_text())["tokenizer"] == "char"
