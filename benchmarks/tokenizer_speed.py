"""Benchmark: our BPE tokenizer against the libraries it wraps, on the 10 MB Gutenberg corpus.

(a) Encoding throughput (MB/s of UTF-8): gptlab's BPETokenizer("gpt2") against tiktoken's gpt2
    used directly, same documents (the corpus split at blank lines), same thread count, for the
    batch call and for one call on the whole text; plus the pure-Python reference encoder on a
    1 MB slice. Target: ours / tiktoken >= 0.9.
(b) Training an 8192-id vocabulary (gpt4 pattern, 9 special tokens): train_bpe_tokenizer's fast
    backend against Hugging Face tokenizers configured the same way by hand, same documents;
    plus the reference trainer on a 1 MB slice. Target: ours / Hugging Face <= 1.2.

Every timing is repeated; the ratios use the best run of each side (least disturbed by other
work on the machine) and the medians are reported too. One JSON line per measurement, then a
summary line (also written to --out). Usage:

    GPTLAB_DATA_DIR=../shared/data python benchmarks/tokenizer_speed.py [--repeats 3] [--threads 2]
    GPTLAB_DATA_DIR=../shared/data python benchmarks/tokenizer_speed.py --quick  # smoke, ~10 s
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gptlab.tokenizer.patterns import get_pattern
from gptlab.tokenizer.pretrained import load_pretrained
from gptlab.tokenizer.train import DEFAULT_SPECIAL_TOKENS, train_bpe_tokenizer


def timed(fn: Callable[[], object], repeats: int) -> dict:
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return {"best_s": round(min(seconds), 4), "median_s": round(statistics.median(seconds), 4)}


def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def tiktoken_gpt2(data_dir: Path, tmp: Path):
    """tiktoken's own gpt2 encoding, from a private copy of the shared cache (no download)."""
    cache = tmp / "tiktoken_cache"
    shutil.copytree(data_dir / "gpt2_tokenizer" / "tiktoken_cache", cache)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    import tiktoken

    return tiktoken.get_encoding("gpt2")


def hf_train(docs: list[str], vocab_size: int, pattern: str) -> object:
    """Hugging Face tokenizers used directly, with the settings our fast backend uses."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(DEFAULT_SPECIAL_TOKENS),
        min_frequency=0,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def split_docs(text: str) -> list[str]:
    """Paragraphs, each keeping its trailing blank line, so they join back into the text."""
    parts = text.split("\n\n")
    return [p + "\n\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def bench_encoding(text: str, ref_text: str, data_dir: Path, tmp: Path, args) -> dict:
    ours = load_pretrained("gpt2", data_dir=data_dir)
    theirs = tiktoken_gpt2(data_dir, tmp)
    docs = split_docs(text)
    mb, ref_mb = len(text.encode()) / 1e6, len(ref_text.encode()) / 1e6
    assert ours.encode_batch(docs, num_threads=args.threads) == theirs.encode_batch(
        docs, num_threads=args.threads
    )
    rows = {}
    cases = {
        "batch_ours": lambda: ours.encode_batch(docs, num_threads=args.threads),
        "batch_tiktoken": lambda: theirs.encode_batch(docs, num_threads=args.threads),
        "whole_ours": lambda: ours.encode_ordinary(text),
        "whole_tiktoken": lambda: theirs.encode_ordinary(text),
    }
    for name, fn in cases.items():
        r = timed(fn, args.repeats)
        rows[name] = emit({"encode": name, "mb": round(mb, 3), **r, "mb_per_s": mb / r["best_s"]})
    r = timed(lambda: ours.with_backend("reference").encode_ordinary(ref_text), args.ref_repeats)
    rows["reference"] = emit(
        {"encode": "reference", "mb": round(ref_mb, 3), **r, "mb_per_s": ref_mb / r["best_s"]}
    )
    return {
        "docs": len(docs),
        "threads": args.threads,
        "batch_ratio_ours_over_tiktoken": round(
            rows["batch_ours"]["mb_per_s"] / rows["batch_tiktoken"]["mb_per_s"], 3
        ),
        "whole_ratio_ours_over_tiktoken": round(
            rows["whole_ours"]["mb_per_s"] / rows["whole_tiktoken"]["mb_per_s"], 3
        ),
        "mb_per_s": {k: round(v["mb_per_s"], 3) for k, v in rows.items()},
    }


def bench_training(text: str, ref_text: str, args) -> dict:
    docs = split_docs(text)
    pattern = get_pattern("gpt4")
    ours = timed(lambda: train_bpe_tokenizer(docs, args.vocab_size, "gpt4"), args.repeats)
    emit({"train": "ours_fast", "vocab_size": args.vocab_size, **ours})
    hf = timed(lambda: hf_train(docs, args.vocab_size, pattern), args.repeats)
    emit({"train": "hf_tokenizers", "vocab_size": args.vocab_size, **hf})
    ref_docs = split_docs(ref_text)
    ref = timed(
        lambda: train_bpe_tokenizer(ref_docs, args.vocab_size, "gpt4", backend="reference"),
        args.ref_repeats,
    )
    emit({"train": "reference", "mb": round(len(ref_text.encode()) / 1e6, 3), **ref})
    fast_small = train_bpe_tokenizer(ref_docs, args.vocab_size, "gpt4")
    ref_small = train_bpe_tokenizer(ref_docs, args.vocab_size, "gpt4", backend="reference")
    return {
        "vocab_size": args.vocab_size,
        "ratio_ours_over_hf": round(ours["best_s"] / hf["best_s"], 3),
        "seconds": {"ours_fast": ours, "hf_tokenizers": hf, "reference_small": ref},
        "reference_equals_fast_on_small": fast_small.ranks == ref_small.ranks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-repeats", type=int, default=1, help="repeats of the pure-Python runs")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--ref-mb", type=float, default=1.0, help="slice for the reference paths")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument("--only", choices=["encode", "train"], default=None)
    ap.add_argument("--out", type=Path, default=None, help="also write the summary JSON here")
    args = ap.parse_args()
    if "GPTLAB_DATA_DIR" not in os.environ:
        sys.exit("set GPTLAB_DATA_DIR to the shared data folder (gutenberg_nltk, gpt2_tokenizer)")
    data_dir = Path(os.environ["GPTLAB_DATA_DIR"])
    text = (data_dir / "gutenberg_nltk" / "corpus.txt").read_text(encoding="utf-8")
    if args.quick:
        text, args.vocab_size, args.ref_mb, args.repeats = text[:300_000], 1024, 0.1, 1
    ref_text = text[: int(args.ref_mb * 1e6)]
    summary: dict = {"corpus_mb": round(len(text.encode()) / 1e6, 3), "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "encode"):
            summary["encode"] = bench_encoding(text, ref_text, data_dir, Path(tmp), args)
        if args.only in (None, "train"):
            summary["train"] = bench_training(text, ref_text, args)
    print(json.dumps({"summary": summary}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
