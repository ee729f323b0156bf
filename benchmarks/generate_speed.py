"""Benchmark: decode tokens/s of gptlab's KV-cache Engine, Hugging Face transformers, and no cache.

The model is the `shakespeare_char` shape (6 layers, 6 heads, 384 wide, char vocabulary of 65)
with random weights (torch.manual_seed(0)); speed does not depend on what the weights learned.
The same weights are converted into a transformers GPT2LMHeadModel (GPT-2's Conv1D stores the
transpose of nn.Linear's weight; the bias-free preset gets zero biases; exact-erf GELU, which is
transformers' "gelu"; the token table sliced from the padded rows to the real 65). The
conversion is checked first: greedy decoding from the same prompt must give the same tokens in
both (`tokens_match`; the no-cache loop is checked the same way), and `max_abs_logit_diff` is
the largest logit difference of one forward over the same tokens.

Context: the preset's context is 256 tokens, less than prompt + new tokens. GPT-2's learned
position table has no rows past it, so both models are built here with a longer context
(seq_len = n_positions = 1024 by default, more if needed): every method attends over the same
growing context, and no cropping or context shifting happens in any of them.

Three methods decode `--new-tokens` tokens after a one-token prompt at each `--batches` size,
all sampling with temperature 0.8 and top-k 200:

    engine        gptlab.infer.Engine(max_batch=batch): the prompt submitted as `batch` separate
                  requests (one seed each), decoded together over the KV cache. The engine and
                  its preallocated cache are built once per batch size, outside the timing.
    engine_compiled  the same with Engine(compile=True): torch.compile'd forward passes (the
                  warm-up run pays the compilation; `gptlab sample/chat/serve --compile`).
    transformers  GPT2LMHeadModel.generate(use_cache=True) on a (batch, 1) prompt.
    no_cache      the baseline: a nanoGPT-style loop that reruns the gptlab model over the whole
                  context (cropped to seq_len) for every new token.

Each method is warmed up once with a few tokens, then timed (time.perf_counter) over
`--repeats` rounds in which the methods take turns (so a drift of the machine's speed touches
them all alike); the best run of each counts. tokens/s = batch * new_tokens / seconds.

    GPTLAB_DATA_DIR=../shared/data python benchmarks/generate_speed.py [--batches 1 8]
    GPTLAB_DATA_DIR=../shared/data python benchmarks/generate_speed.py --quick   # smoke

transformers is optional (`pip install transformers`). Output: a setup line (versions,
threads), a conversion-check line, one JSON line per (method, batch), then a summary line with
the engine's speed ratios (and a Markdown table on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable

import torch

from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine, cast_for_inference
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

METHODS = ("engine", "engine_compiled", "transformers", "no_cache")
OURS = ("engine", "engine_compiled")
TEMPERATURE, TOP_K = 0.8, 200  # the sampling settings of `gptlab sample`
CHECK_TOKENS = 50  # greedy tokens compared by the conversion check
WARMUP_TOKENS = 8
TARGET = "at batch 1 on CPU, engine >= 2x transformers"


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
    hf: GPT2LMHeadModel, prompt: torch.Tensor, new_tokens: int, temperature: float, seed: int
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


def method_runs(
    model: GPT, hf: GPT2LMHeadModel, batch: int, args: argparse.Namespace
) -> dict[str, Callable[[int], object]]:
    """Each method as a function of the number of new tokens, for one batch size."""
    token, temp, seed = args.prompt_token, TEMPERATURE, args.seed
    prompt = torch.full((batch, 1), token, device=args.device)  # the same prompt in every row
    engine = Engine(model, max_batch=batch)  # its cache is allocated once, here
    compiled = Engine(model, max_batch=batch, compile=True)  # compiles in its warm-up run
    return {
        "engine": lambda n: engine_generate(engine, [token], batch, n, temp, seed),
        "engine_compiled": lambda n: engine_generate(compiled, [token], batch, n, temp, seed),
        "transformers": lambda n: transformers_generate(hf, prompt, n, temp, seed),
        "no_cache": lambda n: no_cache_generate(model, prompt, n, temp, seed),
    }


def best_seconds(
    runs: dict[str, Callable[[int], object]], new_tokens: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Warm each method up once with a few tokens, then time `repeats` rounds of new_tokens in
    which the methods take turns; the fastest run of each counts. Taking turns spreads a drift
    of the machine's speed over all methods instead of one, so their ratios stay fair."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for run in runs.values():
        run(WARMUP_TOKENS)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for method, run in runs.items():
            sync()
            t0 = time.perf_counter()
            run(new_tokens)
            sync()
            best[method] = min(best[method], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=500)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed rounds, the methods taking turns; the best run counts")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--prompt-token", type=int, default=0, help="0 is '\\n' in the char vocab")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="which methods to run")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="50 new tokens, 1 repeat: a smoke test")
    a = ap.parse_args()
    new_tokens, repeats = (50, 1) if a.quick else (a.new_tokens, a.repeats)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)

    # One set of random weights, in gptlab and in transformers, on the device in the dtype.
    cfg = model_config(context=max(1024, 1 + new_tokens, 8 + CHECK_TOKENS))
    torch.manual_seed(0)
    model = GPT(cfg)
    hf = to_transformers(model).to(device=device, dtype=dtype)
    model = cast_for_inference(model.to(device), dtype)
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                      "threads": torch.get_num_threads(), "device": str(device),
                      "dtype": a.dtype, "seq_len": cfg.seq_len, "new_tokens": new_tokens,
                      "batches": a.batches, "repeats": repeats,
                      "quick": a.quick}), flush=True)  # fmt: skip
    check = check_conversion(model, hf, Engine(model, max_batch=1), device)
    print(json.dumps({"check": check}), flush=True)

    results: list[dict] = []
    for batch in a.batches:
        runs = method_runs(model, hf, batch, a)
        seconds_of = best_seconds({m: runs[m] for m in a.methods}, new_tokens, repeats, device)
        for method, seconds in seconds_of.items():
            r = {
                "method": method,
                "batch": batch,
                "tokens_per_s": round(batch * new_tokens / seconds, 1),
                "seconds": round(seconds, 3),
            }
            results.append(r)
            print(json.dumps(r), flush=True)

    speed = {(r["method"], r["batch"]): r["tokens_per_s"] for r in results}

    def ratio(ours: str, other: str) -> dict[str, float]:
        return {str(b): round(speed[ours, b] / speed[other, b], 2)
                for b in a.batches if (ours, b) in speed and (other, b) in speed}  # fmt: skip

    ratios = {f"{ours}_vs_{other}": ratio(ours, other)
              for ours in OURS for other in ("transformers", "no_cache")}  # fmt: skip
    met = {ours: ratios[f"{ours}_vs_transformers"]["1"] >= 2.0
           for ours in OURS if "1" in ratios[f"{ours}_vs_transformers"]}  # fmt: skip
    print(json.dumps({"summary": {**ratios, "tokens_match": check["tokens_match"],
                                  "target": TARGET, "target_met": met,
                                  "quick": a.quick}}))  # fmt: skip

    lines = [
        "| method | batch | tokens/s | seconds | engine speedup | engine_compiled speedup |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        b, m = str(r["batch"]), r["method"]
        cells = [f"{ratios[f'{o}_vs_{m}'][b]:.2f}x" if f"{o}_vs_{m}" in ratios and
                 b in ratios[f"{o}_vs_{m}"] else "-" for o in OURS]  # fmt: skip
        lines.append(
            f"| {m} | {b} | {r['tokens_per_s']:.1f} | {r['seconds']:.2f} | {' | '.join(cells)} |"
        )
    lines.append(
        f"\ngreedy tokens match transformers: {check['tokens_match']}; "
        f"max |logit diff| {check['max_abs_logit_diff']:.2g}"
    )
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
