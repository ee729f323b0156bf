"""Benchmark: data preparation throughput and the loader's share of a training step.

1. Preparation with the GPT-2 tokenizer, a fresh output folder each time: the 10 MB Gutenberg
   corpus (in-process, as prepare does below 16 MB), and six copies of it (62 MB, one document
   per file) with 1 and with 2 worker processes. Reports tokens/s and the 2-worker speedup.
2. Loader share: the time of `loader.next_batch()` for `shakespeare_char_cpu`'s batch shape,
   against that preset's measured training step (`ms_per_step` from a short real run). The
   target is under 2 %. The same is reported for the packed loader on GPT-2-tokenized
   Gutenberg at the same batch shape.

Usage:
    GPTLAB_DATA_DIR=../shared/data python benchmarks/data_pipeline.py [--out results.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from gptlab.data.config import DataConfig
from gptlab.data.prepare import prepare
from gptlab.data.registry import Locations
from gptlab.data.shards import load_meta, open_split

# torch-importing modules are imported inside the functions that need them: prepare's worker
# processes are spawned and re-import this script, and must not pay for importing torch.


def time_prepare(loc: Locations, workers: int, tokenizer: str, dataset: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DataConfig(dataset=dataset, tokenizer=tokenizer, num_workers=workers)
        t0 = time.perf_counter()
        out = prepare(cfg, loc, out_dir=Path(tmp) / "out")
        wall = time.perf_counter() - t0
        meta = load_meta(out)
    tokens = meta["tokens"]["train"] + meta["tokens"]["val"]
    return {
        "dataset": dataset,
        "tokenizer": tokenizer,
        "workers": workers,
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall),
    }


def time_loader(loc: Locations, kind: str, dataset: str, tokenizer: str, B: int, T: int) -> float:
    """Median ms per next_batch() over 200 batches (after 20 warm-up batches)."""
    from gptlab.data.loader import build_loader

    out = prepare(DataConfig(dataset=dataset, tokenizer=tokenizer), loc)
    data = open_split(out, "train")
    loader = build_loader(kind, data, B, T, seed=0, with_doc_starts=kind == "packed")
    for _ in range(20):
        loader.next_batch()
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        loader.next_batch()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def step_ms(loc: Locations, steps: int) -> float:
    from gptlab.presets import shakespeare_char_cpu
    from gptlab.runtime import make_runtime
    from gptlab.train.loop import train

    cfg = shakespeare_char_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(
            cfg,
            train=dataclasses.replace(
                cfg.train,
                max_steps=steps,
                eval_interval=steps,
                eval_steps=1,
                log_interval=steps // 2,
                out_dir=tmp,
                save_checkpoints=False,
            ),
            optim=dataclasses.replace(cfg.optim, warmup_steps=min(cfg.optim.warmup_steps, steps)),
        )
        result = train(cfg, make_runtime(cfg.train.device, cfg.train.dtype), loc)
    return result.history[-2]["ms_per_step"]  # the second half: warm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--steps", type=int, default=120)
    args = ap.parse_args()
    data_dir = os.environ.get("GPTLAB_DATA_DIR")
    with tempfile.TemporaryDirectory() as cache:
        loc = Locations(
            cache_dir=Path(cache),
            data_dir=Path(data_dir) if data_dir else None,
            allow_download=False,
        )
        results: dict = {"prepare": [time_prepare(loc, 1, "gpt2", "gutenberg")]}
        big = Path(cache) / "gutenberg_x6"
        big.mkdir()
        corpus = Path(data_dir or ".") / "gutenberg_nltk" / "corpus.txt"
        for i in range(6):
            (big / f"copy{i}.txt").write_bytes(corpus.read_bytes())
        for workers in (1, 2):
            results["prepare"].append(time_prepare(loc, workers, "gpt2", str(big)))
        for row in results["prepare"]:
            print(json.dumps(row), flush=True)
        p1, p2 = results["prepare"][1:]
        results["prepare_speedup_2_workers"] = round(p2["tokens_per_s"] / p1["tokens_per_s"], 3)

        from gptlab.presets import shakespeare_char_cpu

        preset = shakespeare_char_cpu()
        B, T = preset.train.batch_size, preset.model.seq_len
        step = step_ms(loc, args.steps)
        loaders = {
            "random_char_shakespeare": time_loader(loc, "random", "shakespeare_char", "char", B, T),
            "packed_gpt2_gutenberg": time_loader(loc, "packed", "gutenberg", "gpt2", B, T),
            "sequential_gpt2_gutenberg": time_loader(loc, "sequential", "gutenberg", "gpt2", B, T),
        }
        results["step_ms_shakespeare_char_cpu"] = round(step, 2)
        results["loader_ms"] = {k: round(v, 4) for k, v in loaders.items()}
        results["loader_share_of_step"] = {k: round(v / step, 5) for k, v in loaders.items()}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
