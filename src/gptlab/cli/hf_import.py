"""`gptlab import SOURCE --out RUN_DIR`: a Hugging Face model as an ordinary gptlab run directory.

SOURCE is a local HF model folder (config.json plus model.safetensors, sharded safetensors or a
tensors-only pytorch_model.bin), or hf:NAME, downloaded from the hub unless GPTLAB_OFFLINE is
set. The result holds latest/ and best/ (the same files, hard-linked) with the converted
weights, the full config and the tokenizer, so sample, chat, serve, eval, info, export and
train --init-from work on it. The module is called hf_import because `import` is a keyword.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated

import tyro

from gptlab.cli.common import locations, parse
from gptlab.cli.export import write_atomically, write_checkpoint
from gptlab.config import to_dict
from gptlab.data.config import DataConfig
from gptlab.errors import ConfigError, GptlabError
from gptlab.infer.load import HF_PREFIX, open_weights
from gptlab.interop import hf as interop
from gptlab.tokenizer.load import resolve_tokenizer
from gptlab.train.config import RunConfig, TrainConfig

HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "*.txt"]
HUB_FILES += ["vocab.json", "generation_config.json", "special_tokens_map.json"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportArgs:
    """Convert a Hugging Face GPT-2 or Llama-family model into a gptlab run directory."""

    source: Annotated[str, tyro.conf.Positional]
    """A local Hugging Face model folder, or hf:NAME (e.g. hf:gpt2) from the hub."""
    out: str
    """Run directory to create; must not exist yet."""
    tokenizer: str = ""
    """Tokenizer when the model ships none: a name (gpt2) or a tokenizer directory. Default: the
    model's own files, or the offline GPT-2 files for a GPT-2 model with vocab 50257."""


def _download(name: str) -> Path:
    if os.environ.get("GPTLAB_OFFLINE"):
        raise GptlabError(
            f"hf:{name} would be downloaded from the hub, but GPTLAB_OFFLINE is set; unset it "
            "or pass a local model folder"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except ImportError:
        raise GptlabError("downloading needs huggingface_hub: pip install 'gptlab[hf]'") from None
    except Exception as e:  # network and hub errors come in many types; keep the message
        raise GptlabError(f"could not download hf:{name} ({e})") from None


def _folder(source: str) -> Path:
    if source.startswith(HF_PREFIX):
        name = source[len(HF_PREFIX) :]
        path = Path(name).expanduser()
        return path if path.is_dir() else _download(name)
    path = Path(source).expanduser()
    if not path.exists():
        raise GptlabError(f"{source} does not exist; give a Hugging Face model folder or hf:NAME")
    return path


def _is_gpt2(tokenizer, data_dir: Path | None) -> bool:
    """Whether `tokenizer` encodes exactly as the offline GPT-2 one (then data is prepared with
    the name gpt2, which finetuning on GPT-2 token data expects)."""
    if tokenizer.vocab_size != 50257:
        return False
    try:
        gpt2 = resolve_tokenizer("gpt2", data_dir=data_dir)
    except (GptlabError, ValueError):
        return False
    return gpt2.fingerprint() == tokenizer.fingerprint()


def run(argv: list[str]) -> int:
    args = parse(ImportArgs, argv, prog="gptlab import")
    out = Path(args.out)
    if out.exists():
        raise GptlabError(f"{out} already exists; choose a new --out (nothing was overwritten)")
    folder = _folder(args.source)
    source = open_weights(f"{HF_PREFIX}{folder}")
    cfg = source.cfg
    for note in source.notes:
        print(f"note: {note}")
    loc = locations()
    if args.tokenizer:
        try:
            source.tokenizer = resolve_tokenizer(args.tokenizer, data_dir=loc.data_dir)
        except ValueError as e:
            raise ConfigError(f"--tokenizer {args.tokenizer}: {e}") from None
    elif source.tokenizer is None and cfg.pos_emb == "learned" and cfg.vocab_size == 50257:
        source.tokenizer = resolve_tokenizer("gpt2", data_dir=loc.data_dir)
    if source.tokenizer is None:
        raise GptlabError(
            f"{folder} ships no tokenizer (tokenizer.json or vocab.json + merges.txt); pass "
            "--tokenizer NAME or a tokenizer directory"
        )
    if source.tokenizer.vocab_size != cfg.vocab_size:
        raise GptlabError(
            f"the tokenizer has {source.tokenizer.vocab_size} ids but the model's embedding "
            f"{cfg.vocab_size} rows; gptlab needs them equal (pass the matching --tokenizer)"
        )
    gpt2_files = _is_gpt2(source.tokenizer, loc.data_dir)
    run_cfg = RunConfig(
        model=cfg,
        data=DataConfig(tokenizer="gpt2" if gpt2_files else str(out.resolve() / "latest")),
        train=TrainConfig(out_dir=str(out)),
    )
    config = to_dict(run_cfg)

    def fill(tmp: Path) -> None:
        latest, best = tmp / "latest", tmp / "best"
        latest.mkdir()
        best.mkdir()
        write_checkpoint(source, latest, config)
        for f in latest.iterdir():  # best/ is the same checkpoint: hard links, no extra disk
            os.link(f, best / f.name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        provenance = {
            "source": str(args.source),
            "folder": str(folder.resolve()),
            "scores_with_bos": interop.scores_with_bos(cfg, source.tokenizer),
        }
        (tmp / interop.IMPORTED).write_text(json.dumps(provenance, indent=2) + "\n", "utf-8")

    write_atomically(out, fill)
    size = (out / "latest" / "model.safetensors").stat().st_size
    print(
        f"imported {folder} -> {out}: {cfg.n_layer} layers x {cfg.n_embd} wide, vocab "
        f"{cfg.vocab_size}, {size / 1e6:.1f} MB; sample with: gptlab sample {out}"
    )
    return 0
