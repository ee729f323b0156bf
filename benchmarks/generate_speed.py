"""Benchmark: decode tokens/s of gptlab's KV-cache Engine against Hugging Face transformers.

The model is the `shakespeare_char` shape (6 layers, 6 heads, 384 wide, char vocabulary of 65)
with random weights (torch.manual_seed(0)); speed does not depend on what the weights learned.
The same weights are converted into a transformers GPT2LMHeadModel (GPT-2's Conv1D stores the
transpose of nn.Linear's weight; the bias-free preset gets zero biases; exact-erf GELU, which is
transformers' "gelu"; the token table sliced from the padded rows to the real 65). The
conversion is checked first: greedy decoding from the same prompt must give the same tokens in
both (`tokens_match`), and `max_abs_logit_diff` is the largest logit difference of one forward.

Context: the preset's context is 256 tokens, less than prompt + new tokens. GPT-2's learned
position table has no rows past it, so both models are built here with a longer context
(seq_len = n_positions = 1024 by default): every method attends over the same growing context,
and no cropping or context shifting happens in any of them.

Methods decode `--new-tokens` tokens after a one-token prompt at each `--batches` size, all
sampling with temperature 0.8 and top-k 200 (`gptlab sample`'s defaults), the same weights:

    engine           gptlab's default path, as `gptlab sample/chat/serve` with no flag
                     (`--quantize auto`): infer/plan.py's rule picks int8 weights on a CPU with
                     AVX-512 and the checkpoint's fp32 weights elsewhere (the setup line says
                     which: `default_weights`), with the lean decode step
                     (infer/fast_decode.py). Engine and cache are built outside the timing.
    engine_fp32      `--quantize none`: the exact fp32 weights, lean decode step.
    engine_int8      `--quantize int8`: weight-only int8 linears (infer/quantize.py), computing
                     in the dtype plan.py picks for it (bf16 on an AVX-512 CPU).
    engine_bf16      `--dtype bfloat16`: weights, activations and cache in bf16.
    engine_compiled  `--compile`: torch.compile'd forward passes (the warm-up pays compiling).
    transformers     GPT2LMHeadModel.generate(use_cache=True), fp32: the reference.
    hf_static_compiled  generate(cache_implementation="static") with torch.compile'd forward:
                     transformers' fastest like-for-like path (the warm-up pays compiling).
    no_cache         a nanoGPT-style loop rerunning the model over the whole context per token.

Each method is warmed up once, then timed (time.perf_counter) over `--repeats` rounds in which
the methods take turns, so a drift of the machine's speed touches them all alike. Every run is
reported; the ratio of a method to transformers is taken within each round (`ratios` per run,
their min/median/max), and the target is met only if every round's ratio is >= 2.

The quality of the lower precisions is measured against fp32 gptlab on the same weights:
greedy tokens over `--quality-tokens` (500) new tokens (the share that agree, position by
position, and the first position where they part), and the largest logit difference of one
forward over 2 x 64 random tokens. (Val loss needs a trained run: docs/inference.md.)

The bandwidth bound is what a step could not beat if it only had to read its weights once:
weight bytes per token / copy bandwidth, measured here by copying a buffer of the weights'
size (which may sit in cache) and one of 1 GiB (memory).

    GPTLAB_DATA_DIR=../shared/data python benchmarks/generate_speed.py --batches 1 --repeats 5
    GPTLAB_DATA_DIR=../shared/data python benchmarks/generate_speed.py --quick   # smoke

transformers is optional (`pip install transformers`). Output: a setup line (CPU model and its
bf16/AMX flags, versions, threads), a conversion-check line, quality and bandwidth lines, one
JSON line per (method, batch) with every run, then a summary line (and a table on stderr).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from gptlab.ablate.runner import cpu_model
from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine, cast_for_inference
from gptlab.infer.plan import cpu_flags, decode_dtype, decode_quantize
from gptlab.infer.quantize import has_int8_kernel, quantize_int8
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.presets import shakespeare_char

try:
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel
except ImportError:
    raise SystemExit(
        "benchmarks/generate_speed.py compares against Hugging Face transformers, which is not "
        "installed: pip install transformers"
    ) from None

METHODS = ("engine", "engine_fp32", "engine_int8", "engine_bf16", "engine_compiled",
           "transformers", "hf_static_compiled", "no_cache")  # fmt: skip
DEFAULT_METHODS = ("engine", "engine_fp32", "engine_int8", "engine_bf16", "transformers",
                   "hf_static_compiled")  # fmt: skip
OURS = ("engine", "engine_fp32", "engine_int8", "engine_bf16", "engine_compiled")
FLAGS_SHOWN = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512_fp16")
TEMPERATURE, TOP_K = 0.8, 200  # the sampling settings of `gptlab sample`
CHECK_TOKENS = 50  # greedy tokens compared by the conversion check
WARMUP_TOKENS = 8
TARGET = "at batch 1 on CPU, engine (the default path) >= 2x transformers in every run"


# -- the models ------------------------------------------------------------------------------


def model_config(context: int) -> ModelConfig:
    """The shakespeare_char shape with the char vocabulary, no dropout and `context` positions."""
    return dataclasses.replace(
        shakespeare_char().model, vocab_size=65, dropout=0.0, seq_len=context
    )


def to_transformers(model: GPT) -> GPT2LMHeadModel:
    """An fp32 GPT2LMHeadModel computing the same function as the (fp32, GPT-2-style) model."""
    cfg = model.cfg
    gpt2_like = (cfg.pos_emb, cfg.norm, cfg.mlp) == ("learned", "layernorm", "gelu")
    if not gpt2_like or cfg.kv_heads != cfg.n_head or not cfg.tie_embeddings:
        raise ValueError("only the GPT-2 architecture has a transformers GPT2LMHeadModel twin")
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.seq_len,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=cfg.ff_width,
            activation_function="gelu",  # exact erf GELU, as gptlab's F.gelu ("gelu_new" is tanh)
            layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=True,
            bos_token_id=None,  # GPT-2's 50256 lies outside this vocabulary; with no EOS,
            eos_token_id=None,  # generate() always runs max_new_tokens steps
        )
    )
    ours = model.state_dict()
    hf_params = dict(hf.named_parameters())  # lm_head.weight is tied to (the same tensor as) wte

    def put(hf_prefix: str, prefix: str, conv1d: bool = False) -> None:
        """Copy one module's weight (transposed into a Conv1D) and bias (zero if it has none)."""
        weight, bias = ours[f"{prefix}.weight"], ours.get(f"{prefix}.bias")
        hf_params[f"{hf_prefix}.weight"].copy_(weight.t() if conv1d else weight)
        if bias is None:  # the preset has no biases; GPT-2's are then zero
            hf_params[f"{hf_prefix}.bias"].zero_()
        else:
            hf_params[f"{hf_prefix}.bias"].copy_(bias)

    with torch.no_grad():
        hf_params["transformer.wte.weight"].copy_(ours["wte.weight"][: cfg.vocab_size])
        hf_params["transformer.wpe.weight"].copy_(ours["wpe.weight"])
        for i in range(cfg.n_layer):
            h, b = f"transformer.h.{i}", f"blocks.{i}"
            put(f"{h}.ln_1", f"{b}.ln_1")
            put(f"{h}.attn.c_attn", f"{b}.attn.qkv", conv1d=True)  # fused q, k, v: same split
            put(f"{h}.attn.c_proj", f"{b}.attn.proj", conv1d=True)
            put(f"{h}.ln_2", f"{b}.ln_2")
            put(f"{h}.mlp.c_fc", f"{b}.mlp.fc", conv1d=True)
            put(f"{h}.mlp.c_proj", f"{b}.mlp.proj", conv1d=True)
        put("transformer.ln_f", "ln_f")
    return hf.eval()


# -- the three ways to generate --------------------------------------------------------------


def engine_generate(
    engine: Engine, prompt: list[int], batch: int, new_tokens: int, temperature: float, seed: int
) -> list[list[int]]:
    """`batch` separate requests for the same prompt, decoded together; the new tokens of each."""
    params = [
        SamplingParams(
            temperature=temperature, top_k=TOP_K, max_new_tokens=new_tokens, seed=seed + i
        )
        for i in range(batch)
    ]
    requests = engine.generate([prompt] * batch, params)
    return [r.sequences[0].generated for r in requests]


@torch.inference_mode()
def transformers_generate(
    hf: GPT2LMHeadModel,
    prompt: torch.Tensor,
    new_tokens: int,
    temperature: float,
    seed: int,
    static: bool = False,
) -> torch.Tensor:
    """generate() with the KV cache on a (B, T) prompt; the new tokens (B, new_tokens)."""
    torch.manual_seed(seed)  # generate() samples from the global generator
    sampling = dict(do_sample=True, temperature=temperature, top_k=TOP_K)
    out = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        use_cache=True,
        pad_token_id=0,
        **({"cache_implementation": "static"} if static else {}),
        **(sampling if temperature > 0 else dict(do_sample=False)),
    )
    return out[:, prompt.size(1) :]


@torch.inference_mode()
def no_cache_generate(
    model: GPT, prompt: torch.Tensor, new_tokens: int, temperature: float, seed: int
) -> torch.Tensor:
    """The baseline: every new token reruns the model over the whole context (B, <= seq_len).

    Sampling as nanoGPT: logits / temperature, keep the top k, softmax, multinomial draw
    (argmax at temperature 0). Returns the new tokens (B, new_tokens).
    """
    g = torch.Generator(prompt.device).manual_seed(seed)
    idx = prompt
    for _ in range(new_tokens):
        logits = model(idx[:, -model.cfg.seq_len :])[:, -1, :]  # (B, V) of the last position
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        else:
            logits = logits / temperature
            kth = torch.topk(logits, min(TOP_K, logits.size(-1))).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(dim=-1), 1, generator=g)  # (B, 1)
        idx = torch.cat((idx, nxt), dim=1)
    return idx[:, prompt.size(1) :]


# -- checking and timing ---------------------------------------------------------------------


@torch.inference_mode()
def check_conversion(model: GPT, hf: GPT2LMHeadModel, engine: Engine, device) -> dict:
    """Same greedy tokens from the engine, transformers and the no-cache loop, and the largest
    logit difference between gptlab and transformers on one forward."""
    g = torch.Generator().manual_seed(0)
    V = model.cfg.vocab_size
    prompt = torch.randint(V, (1, 8), generator=g).tolist()[0]
    ids = torch.tensor([prompt], device=device)
    ours = engine_generate(engine, prompt, 1, CHECK_TOKENS, 0.0, seed=0)[0]
    theirs = transformers_generate(hf, ids, CHECK_TOKENS, 0.0, seed=0)[0].tolist()
    loop = no_cache_generate(model, ids, CHECK_TOKENS, 0.0, seed=0)[0].tolist()
    x = torch.randint(V, (2, 64), generator=g).to(device)
    diff = (model(x).float() - hf(x).logits.float()).abs().max().item()
    return {
        "greedy_tokens": CHECK_TOKENS,
        "tokens_match": ours == theirs,
        "no_cache_tokens_match": loop == ours,
        "max_abs_logit_diff": float(f"{diff:.3g}"),
    }


def lower_precision_models(model: GPT) -> dict[str, GPT]:
    """gptlab's other paths on copies of the same fp32 weights: int8 (in plan.py's dtype) and
    bf16."""
    flags = cpu_flags()
    int8_dtype = decode_dtype("cpu", flags, quantize="int8")
    return {
        "engine_int8": quantize_int8(cast_for_inference(copy.deepcopy(model), int8_dtype)),
        "engine_bf16": cast_for_inference(copy.deepcopy(model), torch.bfloat16),
    }


def default_weights(device: torch.device) -> str:
    """What `--quantize auto` (no flag) decodes with on this machine: 'int8' or 'fp32'."""
    auto = decode_quantize(device.type, cpu_flags(), "auto", "auto", has_int8_kernel())
    return "int8" if auto == "int8" else "fp32"


def default_model(model: GPT, others: dict[str, GPT]) -> GPT:
    """The model the default path decodes with: the int8 copy where the rule picks int8."""
    return others["engine_int8"] if default_weights(model.wte.weight.device) == "int8" else model


def method_runs(
    model: GPT,
    others: dict[str, GPT],
    hf: GPT2LMHeadModel,
    hf_compiled: GPT2LMHeadModel | None,
    batch: int,
    methods: list[str],
    args: argparse.Namespace,
) -> dict[str, Callable[[int], object]]:
    """Each chosen method as a function of the number of new tokens, for one batch size."""
    token, temp, seed = args.prompt_token, TEMPERATURE, args.seed
    prompt = torch.full((batch, 1), token, device=args.device)  # the same prompt in every row
    default = default_model(model, others)
    engines = {"engine": lambda: Engine(default, max_batch=batch),  # caches allocated here
               "engine_fp32": lambda: Engine(model, max_batch=batch),
               "engine_compiled": lambda: Engine(model, max_batch=batch, compile=True),
               **{m: (lambda m=m: Engine(others[m], max_batch=batch)) for m in others}}  # fmt: skip
    runs: dict[str, Callable[[int], object]] = {}
    for m in methods:
        if m in engines:
            e = engines[m]()
            runs[m] = lambda n, e=e: engine_generate(e, [token], batch, n, temp, seed)
    if "transformers" in methods:
        runs["transformers"] = lambda n: transformers_generate(hf, prompt, n, temp, seed)
    if "hf_static_compiled" in methods and hf_compiled is not None:
        runs["hf_static_compiled"] = lambda n: transformers_generate(
            hf_compiled, prompt, n, temp, seed, static=True
        )
    if "no_cache" in methods:
        runs["no_cache"] = lambda n: no_cache_generate(model, prompt, n, temp, seed)
    return runs


def timed_rounds(
    runs: dict[str, Callable[[int], object]], new_tokens: int, repeats: int, device: torch.device
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Warm each method up once (its wall time is reported: compiling happens there), then
    time `repeats` rounds of new_tokens in which the methods take turns; every run's seconds."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    warmup = {}
    for method, run in runs.items():
        t0 = time.perf_counter()
        run(new_tokens if "compiled" in method else WARMUP_TOKENS)  # compiled: every length
        warmup[method] = round(time.perf_counter() - t0, 2)
    seconds: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(repeats):
        for method, run in runs.items():
            sync()
            t0 = time.perf_counter()
            run(new_tokens)
            sync()
            seconds[method].append(time.perf_counter() - t0)
    return warmup, seconds


@torch.inference_mode()
def quality(model: GPT, others: dict[str, GPT], n_tokens: int, device) -> dict[str, dict]:
    """Each lower precision against fp32 gptlab on the same weights: greedy-token agreement
    over n_tokens and the largest logit difference of one forward."""
    V = model.cfg.vocab_size
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(V, (1, 8), generator=g).tolist()[0]
    x = torch.randint(V, (2, 64), generator=g).to(device)
    ref_tokens = engine_generate(Engine(model, max_batch=1), prompt, 1, n_tokens, 0.0, 0)[0]
    ref_logits = model(x).float()
    out = {}
    for name, other in others.items():
        got = engine_generate(Engine(other, max_batch=1), prompt, 1, n_tokens, 0.0, 0)[0]
        same = [a == b for a, b in zip(ref_tokens, got, strict=True)]
        out[name] = {
            "greedy_tokens": n_tokens,
            "agree": round(sum(same) / n_tokens, 3),
            "first_difference": same.index(False) if False in same else None,
            "max_abs_logit_diff": float(f"{(other(x).float() - ref_logits).abs().max():.3g}"),
            "logit_scale": float(f"{ref_logits.abs().max():.3g}"),
        }
    return out


def copy_bandwidth(n_bytes: int) -> float:
    """GB/s of copying a buffer of n_bytes (read n_bytes and write n_bytes: 2 n_bytes moved)."""
    a = torch.empty(n_bytes // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best / 1e9


def bandwidth_bound(models: dict[str, nn.Module]) -> dict:
    """Per path: the bytes of weights a batch-1 step reads (the tied token table read once as
    the head) and the fastest tokens/s that allows at the measured copy bandwidths."""

    def step_bytes(m: nn.Module) -> int:
        skip = {"wte.weight", "wpe.weight"}  # lookups read one row, not the table
        total = sum(t.numel() * t.element_size() for n, t in m.state_dict().items()
                    if n not in skip)  # fmt: skip
        if "lm_head.weight" not in m.state_dict():  # tied: the head reads the token table
            total += m.wte.weight.numel() * m.wte.weight.element_size()
        return total

    sizes = {name: step_bytes(m) for name, m in models.items()}
    near = copy_bandwidth(max(sizes.values()))
    far = copy_bandwidth(2**30)
    return {
        "copy_GBps_weights_size": round(near, 1),
        "copy_GBps_1GiB": round(far, 1),
        **{name: {"MB_per_token": round(b / 1e6, 1),
                  "bound_tok_s_weights_size_copy": round(near * 1e9 / b),
                  "bound_tok_s_1GiB_copy": round(far * 1e9 / b)}
           for name, b in sizes.items()},
    }  # fmt: skip


def spread(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"min": round(xs[0], 2), "median": round(xs[len(xs) // 2], 2), "max": round(xs[-1], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=500)
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed rounds, methods taking turns; every run counts")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--prompt-token", type=int, default=0, help="0 is '\\n' in the char vocab")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS),
                    help="which methods to run")  # fmt: skip
    ap.add_argument("--quality-tokens", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="50 new tokens, 1 repeat: a smoke test")
    a = ap.parse_args()
    new_tokens, repeats = (50, 1) if a.quick else (a.new_tokens, a.repeats)
    device = torch.device(a.device)

    # One set of random weights, in gptlab (fp32, int8, bf16) and in transformers (fp32).
    cfg = model_config(context=max(1024, 1 + new_tokens, 8 + CHECK_TOKENS, 8 + a.quality_tokens))
    torch.manual_seed(0)
    model = GPT(cfg)
    hf = to_transformers(model).to(device=device)
    model = cast_for_inference(model.to(device), torch.float32)
    others = lower_precision_models(model)
    flags = cpu_flags()
    print(json.dumps({"cpu": cpu_model(), "flags": [f for f in FLAGS_SHOWN if f in flags],
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "threads": torch.get_num_threads(), "device": str(device),
                      "default_weights": default_weights(device),
                      "fp32_dtype": str(decode_dtype(device.type, flags)),
                      "int8_dtype": str(decode_dtype(device.type, flags, quantize="int8")),
                      "seq_len": cfg.seq_len, "new_tokens": new_tokens, "batches": a.batches,
                      "repeats": repeats, "quick": a.quick}), flush=True)  # fmt: skip
    check = check_conversion(model, hf, Engine(model, max_batch=1), device)
    print(json.dumps({"check": check}), flush=True)
    print(json.dumps({"quality_vs_fp32": quality(model, others, a.quality_tokens, device)}),
          flush=True)  # fmt: skip
    print(json.dumps({"bandwidth": bandwidth_bound({"engine_fp32": model, **others})}), flush=True)

    hf_compiled = None
    if "hf_static_compiled" in a.methods:
        hf_compiled = copy.deepcopy(hf)
        hf_compiled.forward = torch.compile(hf_compiled.forward)

    results: list[dict] = []
    summary: dict[str, dict] = {}
    for batch in a.batches:
        runs = method_runs(model, others, hf, hf_compiled, batch, a.methods, a)
        warmup, seconds = timed_rounds(runs, new_tokens, repeats, device)
        for method, times in seconds.items():
            tok_s = [batch * new_tokens / t for t in times]
            r = {"method": method, "batch": batch, "tokens_per_s": [round(x, 1) for x in tok_s],
                 "best_tokens_per_s": round(max(tok_s), 1), "warmup_s": warmup[method]}  # fmt: skip
            if "transformers" in seconds and method != "transformers":
                ratios = [h / t for t, h in zip(times, seconds["transformers"], strict=True)]
                r["vs_transformers_per_run"] = [round(x, 2) for x in ratios]
                r["vs_transformers"] = spread(ratios)
                if method in OURS:
                    summary[f"{method}@{batch}"] = {**spread(ratios), "every_run_ge_2x":
                                                    min(ratios) >= 2.0}  # fmt: skip
            results.append(r)
            print(json.dumps(r), flush=True)
    print(json.dumps({"summary": {"vs_transformers_fp32_generate": summary,
                                  "tokens_match": check["tokens_match"],
                                  "target": TARGET, "quick": a.quick}}))  # fmt: skip

    lines = ["| method | batch | tokens/s (best) | runs | x transformers (min-max) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        ratio = r.get("vs_transformers")
        cell = f"{ratio['min']:.2f}-{ratio['max']:.2f}x" if ratio else "-"
        runs_cell = " ".join(f"{x:.0f}" for x in r["tokens_per_s"])
        lines.append(f"| {r['method']} | {r['batch']} | {r['best_tokens_per_s']:.1f} | "
                     f"{runs_cell} | {cell} |")  # fmt: skip
    lines.append(
        f"\ngreedy tokens match transformers: {check['tokens_match']}; "
        f"max |logit diff| {check['max_abs_logit_diff']:.2g}"
    )
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
