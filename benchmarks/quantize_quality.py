"""Benchmark: what int8 weights (the default of sample/chat/serve on an AVX-512 CPU) cost a
trained run in quality, against its exact weights.

For a run directory it loads the checkpoint twice, as `--quantize none` and `--quantize int8`
do (infer/load.py), and reports:

    val_loss           mean next-token loss over the whole validation split of the run's data,
                       in non-overlapping windows of the model's context (the same windows for
                       both), with its standard error over windows
    max_abs_logit_diff the largest logit difference over the first 128 windows, next to the
                       largest logit there
    greedy             500 greedy tokens after a newline prompt: the share equal position by
                       position, and the first position where they differ

    GPTLAB_DATA_DIR=../shared/data gptlab train --train.out_dir runs/q
    GPTLAB_DATA_DIR=../shared/data python benchmarks/quantize_quality.py runs/q

Output: one JSON line with the CPU, then one with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptlab.ablate.runner import cpu_model
from gptlab.cli.common import locations
from gptlab.eval.tasks.val import open_val_split
from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine
from gptlab.infer.load import load_for_inference
from gptlab.infer.plan import cpu_flags

FLAGS_SHOWN = ("avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def windows(run: Path, loaded, max_windows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (N, T) of the val split in non-overlapping context-long windows."""
    split = open_val_split(loaded.config, locations(), loaded.tokenizer)
    T = loaded.model.cfg.seq_len
    xs, ys = [], []
    for shard in split.shards:
        tokens = np.asarray(shard, dtype=np.int64)
        n = (len(tokens) - 1) // T
        xs.append(torch.from_numpy(tokens[: n * T].reshape(n, T)))
        ys.append(torch.from_numpy(tokens[1 : n * T + 1].reshape(n, T)))
    x, y = torch.cat(xs), torch.cat(ys)
    return (x, y) if max_windows is None else (x[:max_windows], y[:max_windows])


@torch.inference_mode()
def val_loss(
    model, x: torch.Tensor, y: torch.Tensor, batch: int = 128
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, its standard error over windows, logits of the first batch)."""
    per_window, first = [], None
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch]).float()  # (b, T, V)
        if first is None:
            first = logits
        ce = F.cross_entropy(logits.transpose(1, 2), y[i : i + batch], reduction="none")  # (b, T)
        per_window.append(ce.mean(dim=1))
    w = torch.cat(per_window).double()
    return w.mean().item(), (w.std() / math.sqrt(len(w))).item(), first


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
    ap.add_argument("--max-windows", type=int, default=None, help="a subset of the val split")
    a = ap.parse_args()
    flags = cpu_flags()
    print(json.dumps({"cpu": cpu_model(), "flags": [f for f in FLAGS_SHOWN if f in flags],
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))  # fmt: skip
    cpu = torch.device("cpu")
    runs = {
        q: load_for_inference(a.run_dir, a.checkpoint, cpu, "auto", q) for q in ("none", "int8")
    }
    x, y = windows(a.run_dir, runs["none"], a.max_windows)
    out, logits, tokens = {}, {}, {}
    for q, loaded in runs.items():
        loss, stderr, logits[q] = val_loss(loaded.model, x, y)
        tokens[q] = greedy(loaded, a.greedy_tokens)
        out[q] = {
            "weights": loaded.describe(),
            "val_loss": round(loss, 4),
            "stderr": round(stderr, 4),
        }
    ref, got = tokens["none"], tokens["int8"]
    first = next((i for i, (r, g) in enumerate(zip(ref, got, strict=True)) if r != g), None)
    out["val_windows"], out["val_tokens"] = len(x), x.numel()
    out["max_abs_logit_diff"] = round((logits["none"] - logits["int8"]).abs().max().item(), 4)
    out["largest_logit"] = round(logits["none"].abs().max().item(), 2)
    agree = sum(r == g for r, g in zip(ref, got, strict=True)) / len(ref)
    out["greedy"] = {"tokens": len(ref), "agree": round(agree, 3), "first_difference": first}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
