"""`gptlab <verb> ...`: a table of verbs, each a module with `run(argv) -> exit code`.

User mistakes become one line on stderr and a non-zero exit: 2 for a ConfigError (usage and
config errors, UsageError among them), 1 for any other GptlabError (problems found while
running). Nothing else is caught: any other exception, a ValueError included, is a bug and
propagates with its traceback (exit status 1).
"""

from __future__ import annotations

import importlib
import sys

from gptlab.cli.common import EXIT_ERROR, EXIT_USAGE, rank_prefix
from gptlab.errors import ConfigError, GptlabError

VERBS = {
    "prepare": ("gptlab.cli.prepare", "tokenize a corpus once into token shards"),
    "train": ("gptlab.cli.train", "train a model (default: Shakespeare, char-level)"),
    "sft": ("gptlab.cli.sft", "chat finetuning on conversations (masked loss, LoRA)"),
    "sample": ("gptlab.cli.sample", "generate text from a trained run"),
    "chat": ("gptlab.cli.chat", "talk to a trained run in the terminal"),
    "serve": ("gptlab.cli.serve", "an OpenAI-compatible HTTP API and web chat page"),
    "tokenizer": ("gptlab.cli.tokenizer", "train, inspect and use BPE tokenizers"),
    "info": ("gptlab.cli.info", "architecture, parameter count and FLOPs of a preset or run"),
    "plot": ("gptlab.cli.plot", "loss curves of runs vs step, tokens and time, as a PNG"),
    "eval": ("gptlab.cli.eval", "benchmarks, validation loss and perplexity of a trained model"),
    "export": ("gptlab.cli.export", "a run as a weights-only checkpoint or a Hugging Face folder"),
    "import": ("gptlab.cli.hf_import", "a Hugging Face GPT-2 or Llama-family model as a run"),
    "merge": ("gptlab.cli.merge", "fold a LoRA run's adapters into a plain run directory"),
    "ablate": ("gptlab.cli.ablate", "run variants x seeds; report means, CIs, p-values, plots"),
    "scale": ("gptlab.cli.scale", "sweep model size, fit a scaling law, check a held-out size"),
}


def _usage() -> str:
    rows = "\n".join(f"  {verb:<9} {desc}" for verb, (_, desc) in VERBS.items())
    return f"usage: gptlab <verb> [options]   (gptlab <verb> --help for its options)\n\n{rows}\n"


def _error_line(message: str) -> None:
    """One write, so lines of several torchrun ranks do not interleave mid-line."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="")
        return 0 if argv else EXIT_USAGE
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; choose one of: {', '.join(VERBS)}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(VERBS[verb][0])
    prefix = rank_prefix()
    try:
        return module.run(rest)
    except ConfigError as e:  # before GptlabError: a ConfigError is one
        _error_line(f"{prefix}error: {e}")
        return EXIT_USAGE
    except GptlabError as e:
        _error_line(f"{prefix}error: {e}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()  # nothing more can be reported; avoid a second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
