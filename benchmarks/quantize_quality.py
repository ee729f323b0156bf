"""Benchmark: what int8 weights (the default of sample/chat/serve on an AVX-512 CPU) cost a
trained run in quality, against its exact weights.

For a run directory it loads the checkpoint twice, as `--quantize none` and `--quantize int8`
do (infer/load.py), and reports:

    val_loss           `gptlab eval`'s `val` task (eval/tasks/val.py) on each: next-token loss
                       over the whole validation split of the run's data, in disjoint windows of
                       the model's context, with its bootstrap standard error
    max_abs_logit_diff the largest logit difference over the split's first 128 windows, next
                       to the largest logit there
    greedy             500 greedy tokens after a newline prompt: the share equal position by
                       position, and the first position where they differ

    GPTLAB_DATA_DIR=../shared/data gptlab train --train.out_dir runs/q
    GPTLAB_DATA_DIR=../shared/data python benchmarks/quantize_quality.py runs/q

Output: one JSON line with the CPU, then one with the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gptlab.ablate.runner import cpu_model
from gptlab.cli.common import locations
from gptlab.errors import GptlabError
from gptlab.eval.api import run_tasks
from gptlab.eval.tasks.val import open_val_split
from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine
from gptlab.infer.load import load_for_inference
from gptlab.infer.plan import cpu_flags

FLAGS_SHOWN = ("avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def first_windows(split, T: int, n: int = 128) -> torch.Tensor:
    """The first n disjoint context-long windows (n, T) of the split's first shard."""
    tokens = np.asarray(split.shards[0][: n * T], dtype=np.int64)
    return torch.from_numpy(tokens[: len(tokens) // T * T].reshape(-1, T))


def val_metrics(loaded, split) -> dict[str, float]:
    """The `val` task's loss and its standard error over the whole split."""
    m = run_tasks(loaded.model, loaded.tokenizer, ["val"], val_split=split).results[0].metrics
    return {"val_loss": round(m["loss"], 4), "stderr": round(m["loss_stderr"], 4)}


def greedy(loaded, n_tokens: int) -> list[int]:
    prompt = loaded.tokenizer.encode("\n")
    params = SamplingParams(temperature=0, max_new_tokens=n_tokens)
    engine = Engine(loaded.model, max_batch=1, capacity=loaded.model.cfg.seq_len)
    return engine.generate([prompt], params)[0].sequences[0].generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--greedy-tokens", type=int, default=500)
    a = ap.parse_args()
    flags = cpu_flags()
    print(json.dumps({"cpu": cpu_model(), "flags": [f for f in FLAGS_SHOWN if f in flags],
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))  # fmt: skip
    cpu = torch.device("cpu")
    try:
        runs = {
            q: load_for_inference(a.run_dir, a.checkpoint, cpu, "auto", q) for q in ("none", "int8")
        }
        split = open_val_split(runs["none"].config, locations(), runs["none"].tokenizer)
    except GptlabError as e:  # e.g. no such run: one line, as the CLI says it
        raise SystemExit(f"error: {e}") from None
    x = first_windows(split, runs["none"].model.cfg.seq_len)  # (n, T)
    out, logits, tokens = {}, {}, {}
    for q, loaded in runs.items():
        with torch.inference_mode():
            logits[q] = loaded.model(x).float()  # (n, T, V)
        tokens[q] = greedy(loaded, a.greedy_tokens)
        out[q] = {"weights": loaded.describe(), **val_metrics(loaded, split)}
    ref, got = tokens["none"], tokens["int8"]
    first = next((i for i, (r, g) in enumerate(zip(ref, got, strict=True)) if r != g), None)
    out["val_tokens"] = split.n_tokens
    out["max_abs_logit_diff"] = round((logits["none"] - logits["int8"]).abs().max().item(), 4)
    out["largest_logit"] = round(logits["none"].abs().max().item(), 2)
    agree = sum(r == g for r, g in zip(ref, got, strict=True)) / len(ref)
    out["greedy"] = {"tokens": len(ref), "agree": round(agree, 3), "first_difference": first}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
