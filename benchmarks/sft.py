"""Chat finetuning benchmarks (issue 19), each a subcommand printing the CPU model, then one
JSON line.

    python benchmarks/sft.py behaviour [--steps N] [--prompts 100]
        A synthetic chat set where the assistant always gives the same reply. A BPE tokenizer
        (with gptlab's chat tokens) and a small model are trained from scratch with
        `gptlab sft`; then `gptlab serve` answers held-out prompts (never in the training set)
        through /v1/chat/completions at temperature 0, and we count the replies that are
        exactly the fixed one and stopped at end-of-turn (finish_reason "stop").
    python benchmarks/sft.py lora --base RUN_DIR --data SPEC [--steps N] [--rank R]
        Full finetuning vs LoRA from the same base on the same conversations, run one after
        the other: trainable parameters, optimizer-state bytes (from the checkpoint's
        optimizer.pt), median ms per step, and the final masked validation loss.
    python benchmarks/sft.py packing --base RUN_DIR --data SPEC [--steps N]
        The same SFT run with packing on and off: real (non-padding) tokens per second of
        training, and the fraction of the positions computed that were padding.

Every run is a `gptlab` child process (CLI, as a user runs it); nothing here asserts timings.
Needs GPTLAB_DATA_DIR for the chat data of `lora` and `packing`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from gptlab.ablate.runner import cpu_model

FIXED_REPLY = "Thank you for asking. My answer is always the same: forty-two."
SUBJECTS = (
    "river",
    "castle",
    "garden",
    "engine",
    "violin",
    "harbor",
    "lantern",
    "forest",
    "market",
    "comet",
    "bridge",
    "library",
    "desert",
    "orchard",
    "clock",
    "glacier",
    "meadow",
    "tower",
    "island",
    "canyon",
)
ASKS = (
    "What do you think about the {a}?",
    "Can you describe a {a} near a {b}?",
    "Why would a {a} need a {b}?",
    "Tell me a story about the {a} and the {b}.",
    "How far is the {a} from the {b}?",
    "Is a {a} older than a {b}?",
    "Write one line about a {a}.",
    "Which is better, the {a} or the {b}?",
)


def gptlab(args: list[str], cwd: Path) -> float:
    """Run `gptlab ARGS` in a child process; returns its wall seconds (exit on failure)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gptlab", *args], cwd=cwd, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"gptlab {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def synthetic_prompts(n: int, seed: int, exclude: set[str] = frozenset()) -> list[str]:
    rng, out = random.Random(seed), []
    while len(out) < n:
        a, b = rng.sample(SUBJECTS, 2)
        p = rng.choice(ASKS).format(a=a, b=b)
        if p not in exclude and p not in out:
            out.append(p)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def serve_and_ask(run: Path, prompts: list[str], cwd: Path) -> list[dict]:
    """Start `gptlab serve RUN`, send each prompt as one user message, stop the server."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptlab",
            "serve",
            f"bot={run}",
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("the server did not come up:\n" + server.stderr.read()[-2000:])
        out = []
        for p in prompts:
            r = post(
                base + "/v1/chat/completions",
                {
                    "model": "bot",
                    "messages": [{"role": "user", "content": p}],
                    "temperature": 0,
                    "max_tokens": 48,
                },
            )
            choice = r["choices"][0]
            out.append(
                {
                    "prompt": p,
                    "reply": choice["message"]["content"],
                    "finish_reason": choice["finish_reason"],
                }
            )
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def behaviour(a: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sft-behaviour-"))
    train_prompts = synthetic_prompts(a.train, seed=0)
    held_out = synthetic_prompts(a.prompts, seed=1, exclude=set(train_prompts))
    rows = [
        {
            "messages": [
                {"role": "user", "content": p},
                {"role": "assistant", "content": FIXED_REPLY},
            ]
        }
        for p in train_prompts
    ]
    (work / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "text.txt").write_text("\n".join(train_prompts + [FIXED_REPLY] * 50))
    t_tok = gptlab(["tokenizer", "train", "text.txt", "--vocab-size", "400", "--out", "tok"], work)
    t_sft = gptlab(
        [
            "sft",
            "--data",
            "chats.jsonl",
            "--data.tokenizer",
            "tok",
            "--model.n_layer",
            "2",
            "--model.n_head",
            "4",
            "--model.n_embd",
            "128",
            "--model.seq_len",
            "64",
            "--optim.lr",
            "3e-3",
            "--optim.min_lr",
            "3e-4",
            "--train.max_steps",
            str(a.steps),
            "--train.eval_interval",
            str(a.steps),
            "--train.device",
            "cpu",
            "--train.out_dir",
            "run",
        ],
        work,
    )
    answers = serve_and_ask(work / "run", held_out, work)
    follows = [
        x for x in answers if x["reply"].strip() == FIXED_REPLY and x["finish_reason"] == "stop"
    ]
    return {
        "benchmark": "sft_behaviour",
        "train_conversations": len(train_prompts),
        "held_out_prompts": len(held_out),
        "follow": len(follows),
        "follow_fraction": len(follows) / len(held_out),
        "stopped_at_end_of_turn": sum(x["finish_reason"] == "stop" for x in answers),
        "steps": a.steps,
        "tokenizer_s": round(t_tok, 1),
        "sft_s": round(t_sft, 1),
        "examples_not_followed": [x for x in answers if x not in follows][:3],
        "work_dir": str(work),
    }


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _sft_run(base: str, data: str, out: Path, steps: int, extra: list[str], cwd: Path) -> dict:
    wall = gptlab(
        [
            "sft",
            "--preset",
            "chat_sft",
            "--init-from",
            base,
            "--data",
            data,
            "--train.max_steps",
            str(steps),
            "--train.eval_interval",
            str(steps),
            "--train.log_interval",
            "5",
            "--train.out_dir",
            str(out),
            *extra,
        ],
        cwd,
    )
    rows = _metrics(out)
    steps_rows = [r for r in rows if "ms_per_step" in r][1:]  # the first includes warm-up
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    return {"wall_s": round(wall, 1), "rows": steps_rows, "val_loss": val[-1]}


def _optimizer_bytes(checkpoint_dir: Path) -> int:
    import torch

    state = torch.load(checkpoint_dir / "optimizer.pt", weights_only=True, map_location="cpu")
    return sum(
        t.numel() * t.element_size()
        for s in state["state"].values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )


def _trainable(run: Path) -> int:
    """Parameters the run trained: every weight of a full finetune, the adapters of LoRA
    (what its checkpoint's model.safetensors holds)."""
    from safetensors import safe_open

    with safe_open(run / "latest" / "model.safetensors", "pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def lora(a: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sft-lora-"))
    out = {"benchmark": "sft_lora_vs_full", "base": a.base, "data": a.data, "steps": a.steps}
    lora_flags = ["--lora.rank", str(a.rank), "--lora.targets", a.targets]
    lora_flags += ["--optim.lr", str(a.lora_lr), "--optim.min_lr", str(a.lora_lr / 10)]
    for name, extra in (("full", []), ("lora", lora_flags)):
        run = work / name
        r = _sft_run(a.base, a.data, run, a.steps, extra, work)
        ms = [row["ms_per_step"] for row in r["rows"]]
        out[name] = {
            "trainable_params": _trainable(run),
            "optimizer_state_bytes": _optimizer_bytes(run / "latest"),
            "median_ms_per_step": round(statistics.median(ms), 1),
            "final_val_loss": round(r["val_loss"], 4),
            "wall_s": r["wall_s"],
        }
    out["lora"] |= {"targets": a.targets, "rank": a.rank, "lr": a.lora_lr}
    return out


def packing(a: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sft-packing-"))
    out = {"benchmark": "sft_packing_vs_padding", "base": a.base, "data": a.data, "steps": a.steps}
    for name, flag in (("packed", "--sft.packing"), ("padded", "--sft.no-packing")):
        r = _sft_run(a.base, a.data, work / name, a.steps, [flag], work)
        first, last = r["rows"][0], r["rows"][-1]
        seconds = sum(row["ms_per_step"] for row in r["rows"][1:]) / 1e3 * 5  # 5 steps a row
        out[name] = {
            "real_tokens_per_s": round((last["real_tokens"] - first["real_tokens"]) / seconds),
            "pad_fraction": round(last["pad_fraction"], 4),
            "median_ms_per_step": round(statistics.median(x["ms_per_step"] for x in r["rows"]), 1),
            "final_val_loss": round(r["val_loss"], 4),
        }
    out["packed_over_padded_tokens_per_s"] = round(
        out["packed"]["real_tokens_per_s"] / out["padded"]["real_tokens_per_s"], 2
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("behaviour")
    b.add_argument("--steps", type=int, default=150)
    b.add_argument("--train", type=int, default=300)
    b.add_argument("--prompts", type=int, default=100)
    for name in ("lora", "packing"):
        s = sub.add_parser(name)
        s.add_argument("--base", required=True)
        s.add_argument("--data", default="chat_sft")
        s.add_argument("--steps", type=int, default=60)
        s.add_argument("--rank", type=int, default=8)
        s.add_argument("--targets", default="all")
        s.add_argument(
            "--lora-lr",
            type=float,
            default=1e-2,
            help="LoRA's learning rate (adapters want a larger one than full finetuning's 1e-3)",
        )
    a = p.parse_args()
    print(cpu_model(), file=sys.stderr)
    result = {"behaviour": behaviour, "lora": lora, "packing": packing}[a.what](a)
    result["cpu"] = cpu_model()
    result["threads"] = os.cpu_count()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
