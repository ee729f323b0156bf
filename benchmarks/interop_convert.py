"""Hugging Face interop benchmark (issue 18): conversion cost, and the finetune preset.

    python benchmarks/interop_convert.py convert [--size gpt2|tiny]
        A randomly initialised GPT2LMHeadModel (124M, GPT-2 small's shape; no download) saved
        locally, then `gptlab import` and `gptlab export --format hf` each in a child process:
        wall time and peak resident memory (VmHWM) of the child, next to the weights' size
        and to the peak of a child that only imports the same modules (the interpreter, torch,
        transformers: memory a conversion does not control).
    python benchmarks/interop_convert.py finetune --steps N [--size gpt2|tiny]
        The same random stand-in for "pretrained GPT-2", imported, then the preset
        finetune_gpt2_shakespeare for N steps from it (--init-from); validation loss on Tiny
        Shakespeare in GPT-2 tokens before and after, both through `gptlab eval --tasks val`.

Prints the CPU model, then one JSON line. Needs GPTLAB_DATA_DIR (GPT-2 tokenizer, Tiny
Shakespeare) and transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gptlab.ablate.runner import cpu_model

# VmHWM (peak resident memory of this process image), not ru_maxrss: Linux carries ru_maxrss
# across exec, so a child would report its parent's peak (the parent held the HF model)
CHILD = (
    "import re, sys\n"
    "from gptlab.cli.main import main\n"
    "import gptlab.interop.hf, transformers, gptlab.cli.hf_import, gptlab.cli.export\n"
    "rc = main(sys.argv[1:]) if sys.argv[1:] else 0\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
    "print('MAXRSS_KB', hwm, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def child(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, output) of `gptlab ARGS` in a fresh process."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=cwd, capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"gptlab {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB"))
    return wall, int(line.split()[1]) / 1024, proc.stdout


def make_stand_in(folder: Path, size: str) -> int:
    """Save a random GPT2LMHeadModel with the GPT-2 tokenizer files; returns its weight bytes."""
    import torch
    import transformers

    shapes = {"gpt2": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024),
              "tiny": dict(n_layer=2, n_head=2, n_embd=64, n_positions=256)}  # fmt: skip
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, activation_function="gelu", **shapes[size])
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(folder)
    data = Path(os.environ["GPTLAB_DATA_DIR"]) / "gpt2_tokenizer"
    (folder / "vocab.json").write_bytes((data / "encoder.json").read_bytes())
    (folder / "merges.txt").write_bytes((data / "vocab.bpe").read_bytes())
    return sum(p.numel() * p.element_size() for p in model.parameters())


def convert(size: str, work: Path) -> dict:
    weight_bytes = make_stand_in(work / "hf", size)
    _, baseline_mb, _ = child([], work)
    import_s, import_mb, _ = child(["import", "hf", "--out", "run"], work)
    export_s, export_mb, _ = child(["export", "run", "--format", "hf", "--out", "exported"], work)
    weights_mb = weight_bytes / 2**20
    return {
        "size": size,
        "weights_mb": round(weights_mb, 1),
        "baseline_rss_mb": round(baseline_mb, 1),
        "import": {"wall_s": round(import_s, 2), "peak_rss_mb": round(import_mb, 1),
                   "peak_over_weights": round(import_mb / weights_mb, 2),
                   "above_baseline_over_weights": round((import_mb - baseline_mb) / weights_mb, 2)},
        "export": {"wall_s": round(export_s, 2), "peak_rss_mb": round(export_mb, 1),
                   "peak_over_weights": round(export_mb / weights_mb, 2),
                   "above_baseline_over_weights": round((export_mb - baseline_mb) / weights_mb, 2)},
    }  # fmt: skip


def val_loss(run: str, work: Path, limit: int) -> float:
    out = work / f"eval_{run}.json"
    args = ["eval", run, "--tasks", "val", "--limit", str(limit), "--out", str(out)]
    child(args, work)
    return json.loads(out.read_text())["tasks"]["val"]["loss"]


def finetune(size: str, work: Path, steps: int, batch: int, limit: int) -> dict:
    make_stand_in(work / "hf", size)
    child(["import", "hf", "--out", "pretrained"], work)
    before = val_loss("pretrained", work, limit)
    args = ["train", "--preset", "finetune_gpt2_shakespeare", "--init-from", "pretrained",
            "--train.max_steps", str(steps), "--train.eval_interval", str(steps),
            "--train.batch_size", str(batch), "--train.grad_accum_steps", "1",
            "--train.eval_steps", "4", "--train.out_dir", "finetuned"]  # fmt: skip
    train_s, _, _ = child(args, work)
    after = val_loss("finetuned", work, limit)
    return {"size": size, "steps": steps, "batch_size": batch, "val_windows": limit,
            "val_loss_before": round(before, 4), "val_loss_after": round(after, 4),
            "train_wall_s": round(train_s, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["convert", "finetune"])
    parser.add_argument("--size", choices=["gpt2", "tiny"], default="gpt2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--val-windows", type=int, default=20)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.mode == "convert":
            result = convert(args.size, work)
        else:
            result = finetune(args.size, work, args.steps, args.batch_size, args.val_windows)
    print(json.dumps({"cpu": cpu_model(), "mode": args.mode, **result}))


if __name__ == "__main__":
    main()
