"""`gptlab sample RUN_DIR`: load a checkpoint and print generated text.

Defaults come from the run's stored `sample` config section; flags override them. Generation
runs on the KV-cache engine (infer/engine.py): the samples share one pass over the prompt and
decode together; one sample streams to the terminal as it is generated. Past the model's
context, the oldest tokens are dropped (docs/inference.md).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

from gptlab.cli.common import UsageError, parse
from gptlab.config import from_dict
from gptlab.errors import GptlabError
from gptlab.infer.config import SampleConfig
from gptlab.infer.engine import Engine, raise_failed
from gptlab.infer.load import load_for_inference, prompt_ids
from gptlab.runtime import pick_device

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleArgs:
    """Generate text from a trained run."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """Run directory written by gptlab train (or a checkpoint directory inside it)."""
    checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of the run to load."""
    device: str = "auto"
    """'auto', cpu, cuda or mps."""
    dtype: Dtype = "auto"
    """Compute dtype of the weights and KV cache; auto = bf16 on a GPU, fp32 on a CPU (bf16
    activations with int8 weights on an AVX-512 CPU, which --quantize auto picks there)."""
    compile: bool = False
    """Run the model through torch.compile: a slower start (it compiles), faster tokens."""
    quantize: Literal["auto", "none", "int8"] = "auto"
    """Weight format for decoding. auto = int8 on a CPU with AVX-512 and AVX512-BF16 when
    --dtype is auto (there about 1.4x faster per token than fp32, val loss equal within noise:
    docs/inference.md), else none; none = the checkpoint's weights as they are (exact fp32 on a
    CPU); int8 = weight-only int8 linears with per-channel scales, anywhere."""
    sample: Annotated[SampleConfig, tyro.conf.arg(name="")] = SampleConfig()


def _read_prompt(prompt: str) -> str:
    if prompt.startswith("@"):
        path = Path(prompt[1:])
        if not path.is_file():
            raise GptlabError(f"prompt file {path} does not exist")
        prompt = path.read_text(encoding="utf-8")
    return prompt


def run(argv: list[str]) -> int:
    first = parse(SampleArgs, argv, prog="gptlab sample")
    device = pick_device(first.device)
    loaded = load_for_inference(
        Path(first.run_dir), first.checkpoint, device, first.dtype, first.quantize
    )
    # parse again with the run's stored sample settings as the defaults the flags override
    defaults = from_dict(SampleConfig, loaded.config.get("sample", {}), prefix="sample.")
    args = parse(
        SampleArgs, argv, prog="gptlab sample", default=dataclasses.replace(first, sample=defaults)
    )
    sc = args.sample
    tok = loaded.tokenizer
    try:
        ids = prompt_ids(tok, _read_prompt(sc.prompt))
    except ValueError as e:  # e.g. a character outside a char vocabulary: a bad --prompt
        raise UsageError(str(e)) from None
    if loaded.quantized and args.quantize == "auto":  # say so: the text is not exact fp32's
        note = "--quantize auto on this AVX-512 CPU; --quantize none decodes the exact weights"
        print(f"(decoding with {loaded.describe()}: {note})", file=sys.stderr)
    capacity = min(loaded.model.cfg.seq_len, len(ids) + max(sc.max_new_tokens, 1))
    engine = Engine(
        loaded.model, tok, max_batch=sc.num_samples, capacity=capacity, compile=args.compile
    )
    prompt_text = tok.decode(ids[1:] if tok.bos_id is not None else ids)
    request = engine.submit(ids, sc.params(), n=sc.num_samples)
    if sc.num_samples == 1:  # stream: the prompt, then each piece as it is released
        sys.stdout.write(prompt_text)
        while engine.busy:
            for event in engine.step():
                sys.stdout.write(event.text)
                sys.stdout.flush()
        sys.stdout.write("\n")
        raise_failed([request])  # a failure inside the engine is a bug: keep its traceback
        return 0
    while engine.busy:
        engine.step()
    raise_failed([request])
    for i, seq in enumerate(request.sequences):
        if i:
            print("-" * 40)
        print(prompt_text + seq.text)
    return 0
