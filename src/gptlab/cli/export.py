"""`gptlab export RUN_DIR --out DIR [--format gptlab|hf|peft]`: a checkpoint to share or serve.

--format gptlab (the default): a weights-only copy. A training checkpoint carries optimizer
moments (twice the weights for AdamW) and trainer state needed only to resume; the export keeps
`model.safetensors`, `config.json` and the tokenizer files, and loads like any checkpoint
(`gptlab sample DIR`).

--format hf: a Hugging Face model folder (config.json, model.safetensors, generation_config.json,
tokenizer.json, tokenizer_config.json) that `AutoModelForCausalLM.from_pretrained(DIR)` loads
with no custom code (a chat-tuned run's template as tokenizer_config.json's `chat_template`),
or a one-line refusal naming the feature transformers has no exact
equivalent for (gptlab/interop/hf.py). RUN_DIR may be hf:DIR too (converted on the fly). The
output is written into a temporary folder and renamed into place: never half-written.

--format peft: a LoRA run's adapters as PEFT's adapter_config.json + adapter_model.safetensors,
named for the architecture `--format hf` writes for its base (gptlab/interop/peft.py), so
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_HF_DIR), DIR)` loads them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import tyro

from gptlab import checkpoint
from gptlab.cli.common import parse
from gptlab.errors import GptlabError
from gptlab.infer.load import WeightSource, hf_folder, is_lora_checkpoint, open_lora, open_weights
from gptlab.interop import hf as interop
from gptlab.interop.peft import export_peft
from gptlab.interop.tensors import write_safetensors
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.tokenizer.chat import recorded_template

INFERENCE_FILES = (checkpoint.WEIGHTS, checkpoint.CONFIG)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportArgs:
    """Write a weights-only copy of a run's checkpoint, or a Hugging Face model folder."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """Run directory written by gptlab train (or a checkpoint directory inside it, or hf:DIR)."""
    out: str
    """Directory to write; must not exist yet (nothing is ever overwritten)."""
    checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of the run to export."""
    format: Literal["gptlab", "hf", "peft"] = "gptlab"
    """gptlab: a weights-only gptlab checkpoint; hf: a folder transformers loads; peft: a LoRA
    run's adapters in PEFT's format."""
    weights_only: bool = True
    """Leave out optimizer and trainer state (the only mode: a full copy is just `cp -r`)."""


def write_atomically(out: Path, fill: Callable[[Path], None]) -> None:
    """Create `out` by `fill(tmp)` on a temporary sibling folder, then one rename."""
    if out.exists():
        raise GptlabError(f"{out} already exists; choose a new --out (nothing was overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        fill(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parameter_entries(cfg: ModelConfig) -> list[tuple[str, object, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor a gptlab checkpoint of `cfg` stores, in the model's
    order, a tied head under wte.weight only (as checkpoint.save writes it)."""
    import torch

    with torch.device("meta"):
        model = GPT(cfg)
    return [(n, torch.float32, tuple(p.shape)) for n, p in model.named_parameters()]


def write_checkpoint(source: WeightSource, ckpt: Path, config: dict) -> None:
    """A gptlab checkpoint directory (weights, config.json, tokenizer) from `source`, tensor by
    tensor, into the existing folder `ckpt`."""
    entries = parameter_entries(source.cfg)
    missing = [n for n, _, _ in entries if n not in source.names]
    if missing:
        raise GptlabError(f"{source.path} lacks weights {missing[:3]} that its config needs")
    write_safetensors(ckpt / checkpoint.WEIGHTS, entries, source.read, {"format": "pt"})
    doc = {"schema_version": checkpoint.SCHEMA_VERSION, "config": config}
    (ckpt / checkpoint.CONFIG).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if source.tokenizer is not None:
        source.tokenizer.save(ckpt)


def _copy_gptlab(src: Path, tmp: Path) -> None:
    checkpoint.load_model_from_checkpoint(src)  # refuse to export a corrupt checkpoint
    for name in (*INFERENCE_FILES, *(p.name for p in src.iterdir() if _is_tokenizer(p.name))):
        shutil.copyfile(src / name, tmp / name)


def _is_tokenizer(name: str) -> bool:
    return name in ("tokenizer.json", "ranks.tiktoken", "hf_tokenizer.json")


def _export_peft(args: ExportArgs, out: Path) -> int:
    lora = open_lora(args.run_dir, args.checkpoint)
    write_atomically(
        out, lambda tmp: export_peft(lora.cfg, lora.lora, lora.adapters, tmp, lora.base_spec)
    )
    print(
        f"exported the LoRA adapters of {lora.path} -> {out} in PEFT's format; load them onto "
        f"the base exported by: gptlab export {lora.base_spec} --format hf --out BASE_DIR"
    )
    return 0


def run(argv: list[str]) -> int:
    args = parse(ExportArgs, argv, prog="gptlab export")
    out = Path(args.out)
    if out.exists():
        raise GptlabError(f"{out} already exists; choose a new --out (nothing was overwritten)")
    if args.format == "peft":
        return _export_peft(args, out)
    if args.format == "hf":
        source = open_weights(args.run_dir, args.checkpoint)
        reason = interop.export_refusal(source.cfg)
        if reason is not None:  # before anything is written
            raise GptlabError(
                f"cannot export {args.run_dir} to Hugging Face: {reason} has no exact "
                "equivalent in transformers"
            )

        template = recorded_template(source.config, source.tokenizer) if source.tokenizer else None
        jinja = template.jinja() if template is not None else None  # a chat-tuned run's

        def fill(tmp: Path) -> None:
            interop.export_hf(source.cfg, source.names, source.read, source.tokenizer, tmp, jinja)

        write_atomically(out, fill)
        size = sum(p.stat().st_size for p in out.iterdir())
        dropped = " (multi-token-prediction heads left out)" if source.cfg.mtp_heads else ""
        kind = json.loads((out / "config.json").read_text())["architectures"][0]
        print(f"exported {source.path} -> {out} as {kind}: {size / 1e6:.1f} MB{dropped}")
        if source.tokenizer is None:
            print("note: the checkpoint has no tokenizer, so none was exported")
        return 0
    if hf_folder(args.run_dir) is not None:  # an HF model as a gptlab checkpoint
        source = open_weights(args.run_dir)
        write_atomically(out, lambda tmp: write_checkpoint(source, tmp, source.config))
        print(f"exported {source.path} -> {out} as a gptlab checkpoint")
        return 0
    src = Path(args.run_dir)
    if not (src / checkpoint.WEIGHTS).is_file():  # a run directory, not a checkpoint itself
        src = checkpoint.resolve(src / args.checkpoint)
    if not (src / checkpoint.WEIGHTS).is_file() or not (src / checkpoint.CONFIG).is_file():
        raise GptlabError(f"{args.run_dir} holds no {args.checkpoint}/ checkpoint to export")
    if is_lora_checkpoint(src):
        raise GptlabError(
            f"{src} holds LoRA adapters only; gptlab merge {args.run_dir} --out DIR writes the "
            "merged model as a plain run, --format peft exports the adapters, --format hf the "
            "merged model"
        )
    write_atomically(out, lambda tmp: _copy_gptlab(src, tmp))
    size = sum(p.stat().st_size for p in out.iterdir())
    full = sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    print(f"exported {src} -> {out}: {size / 1e6:.1f} MB (the checkpoint was {full / 1e6:.1f} MB)")
    return 0
