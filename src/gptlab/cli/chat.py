"""`gptlab chat RUN_DIR`: talk to a model in the terminal.

A chat-tuned run uses the chat template it was finetuned with (its config's sft.template) and
each reply ends at the template's end of turn; a base model continues the text you type (or use
--template transcript to give it a "User:/Assistant:" transcript). What you type is always
plain text: "<|assistant_end|>" typed in a message is never the special token. Lines starting
with / are commands: /help lists them.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

from gptlab.cli.common import UsageError, parse
from gptlab.infer.chat import ChatSession, TemplateName, chat_format, is_chat_model
from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine
from gptlab.infer.load import load_for_inference
from gptlab.runtime import pick_device


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatArgs:
    """Chat with a trained run in the terminal."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """Run directory written by gptlab train (or a checkpoint directory inside it)."""
    checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of the run to load."""
    device: str = "auto"
    """'auto', cpu, cuda or mps."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype of the weights and KV cache; auto = bf16 on a GPU, fp32 on a CPU (bf16
    activations with int8 weights on an AVX-512 CPU, which --quantize auto picks there)."""
    template: TemplateName | Literal["none"] = "auto"
    """Chat format: auto = the template a chat-tuned run recorded, or none for a base model (it
    continues your text); transcript = a User:/Assistant: transcript for a base model;
    special_tokens / plain = that chat template (tokenizer/chat.py)."""
    compile: bool = False
    """Run the model through torch.compile: a slower start (it compiles), faster tokens."""
    quantize: Literal["auto", "none", "int8"] = "auto"
    """Weight format for decoding. auto = int8 on a CPU with AVX-512 and AVX512-BF16 when
    --dtype is auto (there about 1.4x faster per token than fp32, val loss equal within noise:
    docs/inference.md), else none; none = the checkpoint's weights as they are (exact fp32 on a
    CPU); int8 = weight-only int8 linears with per-channel scales, anywhere."""
    system: str = ""
    """System message at the start of the conversation (chat formats only)."""
    sampling: Annotated[SamplingParams, tyro.conf.arg(name="")] = SamplingParams(
        temperature=0.8, top_k=50, top_p=0.95, max_new_tokens=256
    )
    """How replies are sampled (--seed seeds the first reply; later ones add 1 each)."""


COMMANDS = {
    "/help": "show this list",
    "/reset": "forget the conversation",
    "/temperature X": "0 is greedy; higher is more random",
    "/top_k N": "sample among the N most likely tokens (0 = off)",
    "/top_p X": "nucleus sampling threshold (1 = off)",
    "/min_p X": "drop tokens below X times the top one (0 = off)",
    "/max_tokens N": "most tokens per reply",
    "/seed N": "seed the next replies",
    "/system TEXT": "set the system message (and reset)",
    "/history": "show the conversation so far",
    "/quit": "leave (Ctrl-D works too)",
}
SETTINGS = {  # command -> (SamplingParams field, type)
    "/temperature": ("temperature", float),
    "/top_k": ("top_k", int),
    "/top_p": ("top_p", float),
    "/min_p": ("min_p", float),
    "/max_tokens": ("max_new_tokens", int),
    "/seed": ("seed", int),
}


def _command(session: ChatSession, line: str) -> bool:
    """Run a /command; False means quit."""
    name, _, value = line.partition(" ")
    value = value.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/help":
        print("\n".join(f"  {c:<16} {d}" for c, d in COMMANDS.items()))
    elif name == "/reset":
        session.reset()
        print("(conversation reset)")
    elif name == "/system":
        session.system = value
        session.reset()
        print("(system message set; conversation reset)")
    elif name == "/history":
        if session.fmt is None:
            print(session.text or "(empty)")
        for m in session.messages:
            print(f"[{m.role}] {m.content}")
    elif name in SETTINGS:
        field, kind = SETTINGS[name]
        try:
            session.params = dataclasses.replace(session.params, **{field: kind(value)})
        except ValueError as e:
            print(f"(not changed: {e})")
        else:
            print(f"({field} = {getattr(session.params, field)})")
    else:
        print(f"(unknown command {name}; /help lists them)")
    return True


def run(argv: list[str]) -> int:
    args = parse(ChatArgs, argv, prog="gptlab chat")
    params = args.sampling
    loaded = load_for_inference(Path(args.run_dir), args.checkpoint, pick_device(args.device),
                                args.dtype, args.quantize)  # fmt: skip
    template = args.template
    if template == "auto":
        template = "auto" if is_chat_model(loaded.config) else "none"
    try:
        fmt = None if template == "none" else chat_format(loaded.tokenizer, loaded.config, template)
    except ValueError as e:  # e.g. special_tokens asked of a tokenizer without them
        raise UsageError(f"--template {template}: {e}") from None
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=1, compile=args.compile)
    session = ChatSession(engine, loaded.tokenizer, fmt, params, args.system)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())
    kind = f"chat format {fmt.name}" if fmt else "base model: it continues your text"
    print(f"gptlab chat: {loaded.path} ({kind}), {loaded.describe()}. /help for commands, "
          "/quit to leave.")  # fmt: skip
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print()
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            if not _command(session, line.strip()):
                break
            continue
        try:
            print("model> " if interactive else "", end="", flush=True)
            for piece in session.reply(line):
                print(piece, end="", flush=True)
            print()
        except ValueError as e:  # e.g. a character outside a char vocabulary
            print(f"\n(error: {e})")
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the chat
            for seq in list(engine.running):
                engine.cancel(seq.request)
            engine.step()
            print("\n(reply stopped)")
        if session.params.seed is not None:
            session.params = dataclasses.replace(session.params, seed=session.params.seed + 1)
    return 0
