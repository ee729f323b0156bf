"""Benchmark: HellaSwag examples per second through gptlab's scorer and through
lm-evaluation-harness's own `hf` backend, on the same model, side by side in one run.

The model is a GPT-2-style gptlab model with random weights (torch.manual_seed(0); speed does
not depend on what the weights learned) and the GPT-2 tokenizer from GPTLAB_DATA_DIR, by
default the `shakespeare_char` shape (6 layers, 384 wide) with GPT-2's 50,257-token vocabulary
and a 1024-token context; `--shape gpt2` is GPT-2 124M. The same weights are copied into a
transformers GPT2LMHeadModel with generate_speed.py's `to_transformers` (its Conv1D transposes,
zero biases for a bias-free model, exact-erf GELU); the harness gets that model and a
GPT2TokenizerFast built from the same encoder.json / vocab.bpe.

Both score the first `--examples` HellaSwag examples of hellaswag_val_full.txt, zero-shot, in
the same dtype (`--dtype`, fp32 by default) and batch size (continuations per forward):

    gptlab          gptlab.eval.run_tasks("hellaswag"): context shared across the 4 endings,
                    output head only at continuation positions (eval/scorer.py)
    harness_gptlab  lm_eval.simple_evaluate with gptlab's adapter (eval/harness.py): the same
                    scorer under the harness's own request handling
    harness_hf      lm_eval.simple_evaluate with its `hf` backend (HFLM) on GPT2LMHeadModel:
                    every ending's context + ending as its own row, logits everywhere

The harness reads a task YAML written here over a JSONL of the same examples (context =
the text layout's first line, choices = its endings), so all three see identical requests. A
check line first compares the choices: acc and acc_norm predictions per example (`choices
match`) and the largest difference of a log-likelihood. Then the methods take turns over
`--repeats` timed rounds; the best run of each counts. No BOS is added (GPT-2 was trained
without one, and the harness adds none for it).

    GPTLAB_DATA_DIR=../shared/data python benchmarks/eval_speed.py --examples 200 --repeats 3
    GPTLAB_DATA_DIR=../shared/data python benchmarks/eval_speed.py --quick   # smoke

Needs `pip install 'gptlab[eval]' transformers accelerate` (the hf backend imports accelerate).
Output: a setup line (CPU model, versions, threads), the check line, one JSON line per method,
then a summary with the ratio gptlab / harness_hf against the target of at least 3x.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from generate_speed import to_transformers  # the same GPT-2 -> GPT2LMHeadModel copy
from gptlab.ablate.runner import cpu_model
from gptlab.eval.api import run_tasks
from gptlab.eval.tasks.hellaswag import read
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.presets import gpt2, shakespeare_char
from gptlab.tokenizer.pretrained import load_pretrained

try:
    import lm_eval
    import transformers
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
except ImportError as e:
    raise SystemExit(
        f"benchmarks/eval_speed.py needs lm_eval, transformers and accelerate ({e}): "
        "pip install 'gptlab[eval]' transformers accelerate"
    ) from None

from gptlab.eval.harness import GptlabLM

TARGET = "gptlab >= 3x harness_hf examples/s on HellaSwag"
METHODS = ("gptlab", "harness_gptlab", "harness_hf")
YAML = """task: hellaswag_bench
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{gold}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def model_config(shape: str) -> ModelConfig:
    base = gpt2().model if shape == "gpt2" else shakespeare_char().model
    return dataclasses.replace(base, vocab_size=50257, dropout=0.0, seq_len=1024)


def hf_tokenizer(data_dir: Path) -> transformers.GPT2TokenizerFast:
    """GPT-2's tokenizer in transformers, from the same encoder.json and vocab.bpe (the merges
    after vocab.bpe's version line); the check line shows it encodes as ours does."""
    folder = data_dir / "gpt2_tokenizer"
    vocab = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    lines = (folder / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    return transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)


def write_task(folder: Path, examples) -> tuple[Path, Path]:
    """The examples as a 6-line text file (ours) and as JSONL + task YAML (the harness's)."""
    text = folder / "hellaswag.txt"
    text.write_text(
        "".join(
            f"{e.context}\n{e.gold}\n" + "".join(f"{c}\n" for c in e.choices) for e in examples
        ),
        encoding="utf-8",
    )
    jsonl = folder / "hellaswag.jsonl"
    rows = [{"query": e.context, "choices": list(e.choices), "gold": e.gold} for e in examples]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tasks = folder / "tasks"
    tasks.mkdir()
    (tasks / "hellaswag_bench.yaml").write_text(YAML.format(data=jsonl, cache=folder / "hf"))
    return text, tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200, help="first N HellaSwag examples")
    ap.add_argument("--batch-size", type=int, default=32, help="continuations per forward")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; the best run counts")
    ap.add_argument("--shape", choices=["shakespeare_char", "gpt2"], default="shakespeare_char")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16: gptlab under autocast over fp32 weights (gptlab eval's way), "
                         "the transformers model cast to bf16 (HFLM's dtype=bfloat16)")  # fmt: skip
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--quick", action="store_true", help="8 examples, 1 round: a smoke test")
    a = ap.parse_args()
    n, repeats = (8, 1) if a.quick else (a.examples, a.repeats)
    if not os.environ.get("GPTLAB_DATA_DIR"):
        raise SystemExit("set GPTLAB_DATA_DIR to the shared data folder (HellaSwag, GPT-2 BPE)")
    data_dir = Path(os.environ["GPTLAB_DATA_DIR"])
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    cfg = model_config(a.shape)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    hf = to_transformers(model)
    autocast = contextlib.nullcontext
    if a.dtype == "bfloat16":
        hf = hf.to(torch.bfloat16)
        autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    tok = load_pretrained("gpt2", data_dir=data_dir)
    examples = read(data_dir / "hellaswag" / "hellaswag_val_full.txt")[:n]
    work = Path(tempfile.mkdtemp(prefix="eval_speed-"))
    text, tasks = write_task(work, examples)
    manager = TaskManager(include_path=str(tasks))
    harness_kw = dict(tasks=["hellaswag_bench"], task_manager=manager, bootstrap_iters=0)

    def gptlab_run():
        r = run_tasks(model, tok, "hellaswag", batch_size=a.batch_size, add_bos=False,
                      autocast=autocast, data_paths={"hellaswag": text}).results[0]  # fmt: skip
        return r.predictions["pred"], r.predictions["pred_norm"], None

    def harness_run(lm):
        out = simple_evaluate(model=lm, log_samples=True, **harness_kw)
        samples = sorted(out["samples"]["hellaswag_bench"], key=lambda s: s["doc_id"])
        lls = [[ll for ll, _ in s["filtered_resps"]] for s in samples]
        pred = [max(range(len(x)), key=lambda i: (x[i], -i)) for x in lls]
        norm = [
            max(range(len(x)), key=lambda i: (x[i] / len(e.choices[i]), -i))
            for x, e in zip(lls, examples, strict=True)
        ]
        return pred, norm, lls

    ours_lm = GptlabLM(
        model=model, tokenizer=tok, batch_size=a.batch_size, add_bos=False, autocast=autocast
    )
    hf_lm = HFLM(pretrained=hf, tokenizer=hf_tokenizer(data_dir), batch_size=a.batch_size)
    runs = {
        "gptlab": gptlab_run,
        "harness_gptlab": lambda: harness_run(ours_lm),
        "harness_hf": lambda: harness_run(hf_lm),
    }
    runs = {m: runs[m] for m in a.methods}
    setup = {
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "lm_eval": getattr(lm_eval, "__version__", None),
        "shape": a.shape, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
        "vocab_size": cfg.vocab_size, "examples": n, "batch_size": a.batch_size,
        "repeats": repeats, "dtype": a.dtype, "quick": a.quick,
    }  # fmt: skip
    print(json.dumps(setup), flush=True)

    with torch.inference_mode():
        first = {m: run() for m, run in runs.items()}  # also the warm-up
    if {"gptlab", "harness_hf"} <= first.keys():
        ours, theirs = first["gptlab"], first["harness_hf"]
        match = sum(a == b for a, b in zip(ours[0], theirs[0], strict=True)) / n
        match_norm = sum(a == b for a, b in zip(ours[1], theirs[1], strict=True)) / n
        ll_diff = None
        if "harness_gptlab" in first:
            pairs = zip(first["harness_gptlab"][2], theirs[2], strict=True)
            ll_diff = max(abs(x - y) for xs, ys in pairs for x, y in zip(xs, ys, strict=True))
        print(json.dumps({"check": {"acc_choices_match": match, "acc_norm_choices_match":
                                    match_norm, "max_abs_loglikelihood_diff": ll_diff}}),
              flush=True)  # fmt: skip

    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for method, run in runs.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                run()
            best[method] = min(best[method], time.perf_counter() - t0)
    speed = {}
    for method, seconds in best.items():
        speed[method] = n / seconds
        print(json.dumps({"method": method, "examples_per_s": round(speed[method], 2),
                          "seconds": round(seconds, 3)}), flush=True)  # fmt: skip
    summary: dict = {"target": TARGET, "quick": a.quick}
    if {"gptlab", "harness_hf"} <= speed.keys():
        ratio = speed["gptlab"] / speed["harness_hf"]
        summary |= {"gptlab_vs_harness_hf": round(ratio, 2), "target_met": ratio >= 3.0}
    if {"harness_gptlab", "harness_hf"} <= speed.keys():
        summary["harness_gptlab_vs_harness_hf"] = round(
            speed["harness_gptlab"] / speed["harness_hf"], 2
        )
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
