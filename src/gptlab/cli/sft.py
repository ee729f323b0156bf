"""`gptlab sft`: chat finetuning, which is `gptlab train` on conversations.

    gptlab sft --init-from RUN_DIR|hf:DIR --data chats.jsonl [--lora.rank 8] [any train flag]

`--data` is `--sft.data`; without `--preset` the `sft` preset supplies finetuning defaults
(a small learning rate, short run, frequent evals), and `--init-from` the architecture and the
weights. Everything else (optimizer, schedule, mixed precision, torchrun, resume, checkpoints,
metrics) is the ordinary training loop: this module only rewrites the command line.
"""

from __future__ import annotations

from gptlab.cli import train
from gptlab.cli.common import UsageError


def translate(argv: list[str]) -> list[str]:
    """The `gptlab train` command line of a `gptlab sft` one."""
    out: list[str] = []
    for arg in argv:
        if arg == "--data":
            out.append("--sft.data")
        elif arg.startswith("--data="):
            out.append("--sft.data=" + arg.removeprefix("--data="))
        else:
            out.append(arg)
    wants_help = any(a in ("-h", "--help") for a in out)
    resume = "--resume" in out
    has_data = any(a == "--sft.data" or a.startswith("--sft.data=") for a in out)
    if not (has_data or resume or wants_help or "--config" in out):
        raise UsageError(
            "gptlab sft needs conversations: --data FILE[,FILE...] (JSON/JSONL in the OpenAI "
            "messages, ShareGPT or instruction/output schema; docs/finetuning.md)"
        )
    has_preset = any(a == "--preset" or a.startswith("--preset=") for a in out)
    if not has_preset and not resume:
        out = ["--preset", "sft", *out]
    return out


DESCRIPTION = (
    "Chat finetuning: gptlab train on conversations (--data FILE[,FILE...] is --sft.data), "
    "from --init-from RUN_DIR|hf:DIR, with the sft preset's defaults unless --preset is given; "
    "--lora.rank R for LoRA. docs/finetuning.md"
)


def run(argv: list[str]) -> int:
    return train.run(translate(argv), prog="gptlab sft", description=DESCRIPTION)
