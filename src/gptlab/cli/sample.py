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
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.load import load_tokenizer


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
    if tok.vocab_size != model.cfg.vocab_size:
        raise GptlabError(
            f"{ckpt}: the saved tokenizer has {tok.vocab_size} ids but the model "
            f"{model.cfg.vocab_size}; the checkpoint is inconsistent, re-export it from its run"
        )
    prompt_ids = _prompt_ids(tok, _read_prompt(sc.prompt))
    generator = torch.Generator(device=device).manual_seed(sc.seed)
    idx = torch.tensor([prompt_ids] * sc.num_samples, dtype=torch.long, device=device)
    out = generate(
        model, idx, sc.max_new_tokens, model.cfg.seq_len, sc.temperature, sc.top_k, generator
    )  # (num_samples, T0 + max_new_tokens)
    skip = 1 if tok.bos_id is not None else 0  # the BOS we put in front is not text
    for i, row in enumerate(out.tolist()):
        if i:
            print("-" * 40)
        print(tok.decode(row[skip:]))
    return 0


def _prompt_ids(tok: Tokenizer, prompt: str) -> list[int]:
    """Ids of the prompt, after the tokenizer's BOS when it has one (as documents begin in the
    training data); an empty prompt needs a BOS to start from."""
    try:
        ids = tok.encode_ordinary(prompt)
    except ValueError as e:
        raise GptlabError(str(e)) from None
    if tok.bos_id is not None:
        ids = [tok.bos_id, *ids]
    if not ids:
        raise GptlabError(
            "the prompt is empty and this tokenizer has no BOS token to start from; give at "
            "least one character with --prompt"
        )
    return ids


def _load_tokenizer(ckpt: Path) -> Tokenizer:
    """The tokenizer that training saved next to the weights."""
    if not (ckpt / "tokenizer.json").is_file():
        raise GptlabError(f"{ckpt} has no tokenizer.json; it was not written by gptlab train")
    try:
        return load_tokenizer(ckpt)
    except ValueError as e:
        raise GptlabError(f"{ckpt}: {e}") from None
