"""`gptlab tokenizer train|encode|decode|stats`: train, inspect and use BPE tokenizers.

encode prints ids on one line; decode writes the text back exactly, adding no newline of its
own, so `gptlab tokenizer encode X | gptlab tokenizer decode` gives back X byte for byte (the
newline after the ids is whitespace between ids, not text). Texts are read and written as UTF-8
without newline translation.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

from gptlab.cli.common import EXIT_USAGE, UsageError, locations, parse
from gptlab.data.sources import iter_texts
from gptlab.errors import GptlabError
from gptlab.tokenizer.base import CONFIG_FILE, SpecialTokenError, Tokenizer
from gptlab.tokenizer.bpe import RANKS_FILE, BPETokenizer
from gptlab.tokenizer.load import resolve_tokenizer
from gptlab.tokenizer.train import BOS, DEFAULT_SPECIAL_TOKENS, EOS, PAD, train_bpe_tokenizer

USAGE = """usage: gptlab tokenizer <command> [options]   (gptlab tokenizer <command> --help)

  train   learn a byte-level BPE from text files:  train INPUT... --vocab-size N --out DIR
  encode  print the ids of a text:                  encode --tokenizer T [TEXT | --file F]
  decode  print the text of ids (stdin or --ids):   decode --tokenizer T [--ids "1 2 3"]
  stats   bytes per token, gpt2 comparison, top tokens of a file:  stats --tokenizer T FILE

A tokenizer T is gpt2, cl100k_base, o200k_base or a directory written by `train`.
"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainArgs:
    """Learn a byte-level BPE tokenizer from text and save it to --out."""

    inputs: Annotated[tuple[str, ...], tyro.conf.Positional]
    """Text, JSONL or Parquet files, folders (recursive) or glob patterns."""
    vocab_size: int
    """Total ids: 256 bytes + merges + the special tokens."""
    out: str
    """Directory to save tokenizer.json and ranks.tiktoken in (new, empty or a tokenizer's)."""
    pattern: str = "gpt4"
    """Split regex: gpt2, gpt4 (alias cl100k) or o200k."""
    backend: Literal["fast", "reference"] = "fast"
    """fast: Hugging Face tokenizers; reference: pure Python (same merges, to read and check)."""
    allow_special_text: bool = False
    """Learn special-token spellings found in the text as ordinary text instead of refusing."""
    special_tokens: tuple[str, ...] = DEFAULT_SPECIAL_TOKENS
    """Special tokens, appended after the merges in this order."""
    bos: str = BOS
    """Spelling of the beginning-of-document token ('' for none)."""
    eos: str = EOS
    """Spelling of the end-of-document token ('' for none)."""
    pad: str = PAD
    """Spelling of the padding token ('' for none)."""
    text_field: str = "text"
    """JSONL field / Parquet column holding the text."""
    name: str = ""
    """Name stored in tokenizer.json (default: the --out folder's name)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncodeArgs:
    """Print the token ids of TEXT, of --file, or of stdin, space-separated on one line."""

    text: Annotated[str | None, tyro.conf.Positional] = None
    """Text to encode (default: --file, else stdin)."""
    tokenizer: str
    """gpt2, cl100k_base, o200k_base or a tokenizer directory."""
    file: str = ""
    """Encode this UTF-8 file's exact content."""
    special: Literal["error", "allow", "ordinary"] = "error"
    """Special-token spellings in the text: refuse, encode as special ids, or as plain text."""
    backend: Literal["tiktoken", "reference"] = "tiktoken"
    """BPE encoder to use (identical ids; reference is pure Python)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeArgs:
    """Write the text of token ids (from --ids, else stdin) exactly, with no added newline."""

    tokenizer: str
    """gpt2, cl100k_base, o200k_base or a tokenizer directory."""
    ids: str | None = None
    """Ids separated by spaces or commas (default: read them from stdin)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StatsArgs:
    """How a tokenizer splits a file: bytes per token, against gpt2, longest and top tokens."""

    file: Annotated[str, tyro.conf.Positional]
    """UTF-8 text file."""
    tokenizer: str
    """gpt2, cl100k_base, o200k_base or a tokenizer directory."""
    top: int = 10
    """How many tokens to list in each table."""


def _resolve(name: str) -> Tokenizer:
    """The tokenizer --tokenizer names; a name or directory it cannot use is a UsageError."""
    loc = locations()
    try:
        return resolve_tokenizer(
            name,
            data_dir=loc.data_dir,
            tiktoken_cache_dir=loc.tiktoken_cache_dir,
            allow_download=loc.allow_download,
        )
    except ValueError as e:  # unknown name, 'char', a file, unusable tokenizer files
        raise UsageError(str(e)) from None


def _read_text(path: str) -> str:
    """A file's exact text (no newline translation); GptlabError if missing or not UTF-8."""
    p = Path(path)
    if not p.is_file():
        raise GptlabError(f"{path} does not exist or is not a file")
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path} is not UTF-8 text (byte offset {e.start}); convert it") from None


def _read_stdin() -> str:
    buffer = getattr(sys.stdin, "buffer", None)  # bytes, so '\r\n' stays as it is
    return buffer.read().decode("utf-8") if buffer is not None else sys.stdin.read()


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise GptlabError(f"--out {out} is a file; give a directory")
    ours = {CONFIG_FILE, RANKS_FILE}
    if out.is_dir() and not {p.name for p in out.iterdir()} <= ours:
        raise GptlabError(
            f"--out {out} is not empty and is not a tokenizer directory; choose a new or empty one"
        )


def _train(argv: list[str]) -> int:
    args = parse(TrainArgs, argv, prog="gptlab tokenizer train")
    if not args.inputs:
        raise UsageError("give at least one input file or folder to train on")
    out = Path(args.out)
    _check_out_dir(out)
    seen = {"docs": 0, "chars": 0}

    def texts() -> Iterator[str]:
        for text in iter_texts(list(args.inputs), text_field=args.text_field):
            seen["docs"] += 1
            seen["chars"] += len(text)
            yield text

    t0 = time.perf_counter()
    try:
        tok = train_bpe_tokenizer(
            texts(),
            args.vocab_size,
            args.pattern,
            args.special_tokens,
            backend=args.backend,
            allow_special_text=args.allow_special_text,
            bos=args.bos or None,
            eos=args.eos or None,
            pad=args.pad or None,
            name=args.name or out.resolve().name,
        )
    except ValueError as e:  # its checks of the flags and the corpus (vocab too small, ...)
        raise UsageError(str(e)) from None
    seconds = time.perf_counter() - t0
    files = tok.save(out)
    n_special = len(tok.special_tokens)
    print(
        f"trained {tok.vocab_size:,}-token BPE ({args.backend} backend, pattern "
        f"{tok.pattern_name}): 256 bytes + {tok.vocab_size - 256 - n_special:,} merges + "
        f"{n_special} special tokens"
    )
    docs = f"{seen['docs']:,} document{'s' if seen['docs'] != 1 else ''}"
    print(f"from {docs}, {seen['chars']:,} characters, in {seconds:.1f} s")
    print(f"saved to {out} ({', '.join(p.name for p in files)})")
    return 0


def _encode(argv: list[str]) -> int:
    args = parse(EncodeArgs, argv, prog="gptlab tokenizer encode")
    if args.text is not None and args.file:
        raise UsageError("give either TEXT or --file, not both")
    text = args.text if args.text is not None else _read_text(args.file) if args.file else None
    if text is None:
        text = _read_stdin()
    tok = _resolve(args.tokenizer)
    if isinstance(tok, BPETokenizer) and args.backend != tok.backend:
        tok = tok.with_backend(args.backend)
    try:
        if args.special == "ordinary":
            ids = tok.encode_ordinary(text)
        else:
            ids = tok.encode(text, allowed_special=args.special == "allow")
    except SpecialTokenError:
        raise UsageError(
            f"the text contains the special token {tok.find_special(text)!r}; pass --special "
            "allow to encode it as its id, or --special ordinary to encode it as plain text"
        ) from None
    print(" ".join(map(str, ids)))
    return 0


def parse_ids(text: str) -> list[int]:
    """Integers separated by whitespace or commas; UsageError naming the first bad one."""
    ids = []
    for word in text.replace(",", " ").split():
        try:
            ids.append(int(word))
        except ValueError:
            raise UsageError(
                f"{word[:40]!r} is not a token id; give integers separated by spaces"
            ) from None
    return ids


def _decode(argv: list[str]) -> int:
    args = parse(DecodeArgs, argv, prog="gptlab tokenizer decode")
    ids = parse_ids(args.ids if args.ids is not None else _read_stdin())
    tok = _resolve(args.tokenizer)
    if isinstance(tok, BPETokenizer):
        try:
            tok.check_ids(ids)
        except ValueError as e:  # an id out of range or unused in this vocabulary
            raise UsageError(str(e)) from None
    elif any(not 0 <= i < tok.vocab_size for i in ids):
        bad = next(i for i in ids if not 0 <= i < tok.vocab_size)
        raise UsageError(f"token id {bad} is out of range (ids 0..{tok.vocab_size - 1})")
    sys.stdout.write(tok.decode(ids))
    sys.stdout.flush()
    return 0


def _show(tok: Tokenizer, token_id: int) -> str:
    raw = tok.token_to_bytes(token_id) if isinstance(tok, BPETokenizer) else None
    if raw is None:
        return repr(tok.decode([token_id]))
    return repr(raw.decode("utf-8", errors="backslashreplace"))


def _stats(argv: list[str]) -> int:
    args = parse(StatsArgs, argv, prog="gptlab tokenizer stats")
    text = _read_text(args.file)
    tok = _resolve(args.tokenizer)
    ids = np.asarray(tok.encode_ordinary(text), dtype=np.int64)  # (N,)
    n_bytes = len(text.encode("utf-8"))
    counts = np.bincount(ids, minlength=tok.vocab_size)  # (V,)
    used = np.flatnonzero(counts)
    print(f"tokenizer   {tok.describe()}")
    print(f"file        {args.file}: {n_bytes:,} bytes, {len(text):,} characters")
    per_token = n_bytes / len(ids) if len(ids) else 0.0
    print(
        f"tokens      {len(ids):,} ({per_token:.3f} bytes per token); {len(used):,} distinct ids "
        f"of {tok.vocab_size:,} ({len(used) / tok.vocab_size:.1%})"
    )
    print(f"vs gpt2     {_against_gpt2(tok, text, len(ids))}")
    sizes = tok.token_bytes()  # (V,)
    longest = used[np.argsort(-sizes[used], kind="stable")[: args.top]]
    print("\nlongest tokens in the file (bytes, count, id, token):")
    for i in longest:
        print(f"  {sizes[i]:>4} {counts[i]:>10,} {i:>7}  {_show(tok, int(i))}")
    frequent = used[np.argsort(-counts[used], kind="stable")[: args.top]]
    print("\nmost frequent tokens (count, share, id, token):")
    for i in frequent:
        share = counts[i] / max(len(ids), 1)
        print(f"  {counts[i]:>10,} {share:>6.2%} {i:>7}  {_show(tok, int(i))}")
    return 0


def _against_gpt2(tok: Tokenizer, text: str, n_tokens: int) -> str:
    try:
        gpt2 = _resolve("gpt2")
    except GptlabError:
        return "gpt2 is not available offline (put its files in $GPTLAB_DATA_DIR/gpt2_tokenizer)"
    if gpt2.fingerprint() == tok.fingerprint():
        return "this is gpt2"
    n_gpt2 = len(gpt2.encode_ordinary(text))
    ratio = n_tokens / n_gpt2 if n_gpt2 else float("nan")
    return f"{n_gpt2:,} gpt2 tokens; this tokenizer needs {ratio:.3f}x as many"


COMMANDS = {"train": _train, "encode": _encode, "decode": _decode, "stats": _stats}


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}")
    return COMMANDS[command](rest)
