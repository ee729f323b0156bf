"""`gptlab sample RUN_DIR`: load a checkpoint and print generated text.

Defaults come from the run's stored `sample` config section; flags override them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from gptlab import checkpoint
from gptlab.cli.common import parse
from gptlab.config import from_dict
from gptlab.errors import GptlabError
from gptlab.infer.config import SampleConfig
from gptlab.infer.generate import generate
from gptlab.runtime import pick_device
from gptlab.tokenizer.char import CharTokenizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleArgs:
    """Generate text from a trained run."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """Run directory written by gptlab train (or a checkpoint directory inside it)."""
    checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of the run to load."""
    device: str = "auto"
    """'auto', cpu, cuda or mps."""
    sample: Annotated[SampleConfig, tyro.conf.arg(name="")] = SampleConfig()


def _checkpoint_dir(run_dir: Path, which: str) -> Path:
    if not run_dir.exists():
        raise GptlabError(f"run directory {run_dir} does not exist; train one with gptlab train")
    if (run_dir / checkpoint.CONFIG).is_file() and (run_dir / checkpoint.WEIGHTS).is_file():
        return run_dir  # a checkpoint directory itself
    path = checkpoint.resolve(run_dir / which)
    if not path.is_dir():
        raise GptlabError(f"{run_dir} has no {which}/ checkpoint; has training reached an eval?")
    return path


def _read_prompt(prompt: str) -> str:
    if prompt.startswith("@"):
        path = Path(prompt[1:])
        if not path.is_file():
            raise GptlabError(f"prompt file {path} does not exist")
        prompt = path.read_text(encoding="utf-8")
    if not prompt:
        raise GptlabError("the prompt is empty; give at least one character with --prompt")
    return prompt


def run(argv: list[str]) -> int:
    first = parse(SampleArgs, argv, prog="gptlab sample")
    ckpt = _checkpoint_dir(Path(first.run_dir), first.checkpoint)
    stored = checkpoint.load_config(ckpt)
    defaults = from_dict(SampleConfig, stored.get("sample", {}), prefix="sample.")
    args = parse(
        SampleArgs, argv, prog="gptlab sample", default=dataclasses.replace(first, sample=defaults)
    )
    sc = args.sample

    device = pick_device(args.device)
    model = checkpoint.load_model_from_checkpoint(ckpt, device).eval()
    tok = _load_tokenizer(ckpt)
    try:
        prompt_ids = tok.encode(_read_prompt(sc.prompt))
    except ValueError as e:
        raise GptlabError(str(e)) from None
    generator = torch.Generator(device=device).manual_seed(sc.seed)
    idx = torch.tensor([prompt_ids] * sc.num_samples, dtype=torch.long, device=device)
    out = generate(
        model, idx, sc.max_new_tokens, model.cfg.seq_len, sc.temperature, sc.top_k, generator
    )  # (num_samples, T0 + max_new_tokens)
    for i, row in enumerate(out.tolist()):
        if i:
            print("-" * 40)
        print(tok.decode(row))
    return 0


def _load_tokenizer(ckpt: Path) -> CharTokenizer:
    """The tokenizer that training saved next to the weights."""
    if (ckpt / "tokenizer.json").is_file():
        return CharTokenizer.load(ckpt)
    raise GptlabError(f"{ckpt} has no tokenizer.json; it was not written by gptlab train")
