"""`train_bpe_tokenizer`: texts in, a saved-ready BPETokenizer out, in our vocabulary layout.

Layout: ids 0..255 are the raw bytes (id = byte value), then the merges in the order they were
learned, then the special tokens in the order given. `vocab_size` counts all of them, so a model
built with it has a row for every id. Both backends ("fast": Hugging Face `tokenizers`, and
"reference": pure Python) learn the same merges; the fast one is the default because it scales
to gigabytes, the reference one is there to read and to check it.

Special-token spellings in the training text are an error by default: merged as ordinary text
they would teach the vocabulary pieces of '<|eos|>' and make data that imitates control tokens.
`allow_special_text=True` accepts them as plain text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from gptlab.tokenizer.base import SpecialTokenError
from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.fast import train_ranks_fast
from gptlab.tokenizer.patterns import canonical_pattern_name, get_pattern
from gptlab.tokenizer.reference import count_words, train_ranks

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# Reserved for the chat format of a later finetuning stage; unused in pretraining text.
CHAT_TOKENS = (
    "<|system_start|>",
    "<|system_end|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
)
DEFAULT_SPECIAL_TOKENS = (BOS, EOS, PAD, *CHAT_TOKENS)
TrainBackend = Literal["fast", "reference"]


class _CheckedTexts:
    """Passes texts through, counting characters and refusing special-token spellings."""

    def __init__(self, texts: Iterable[str], special: Sequence[str], allow_special: bool) -> None:
        self.texts, self.special, self.allow_special = texts, special, allow_special
        self.n_chars = 0
        self.n_texts = 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.n_texts += 1
            self.n_chars += len(text)
            if not self.allow_special:
                found = next((s for s in self.special if s in text), None)
                if found is not None:
                    raise SpecialTokenError(
                        f"training text {self.n_texts} contains the special token {found!r}; "
                        "remove it, or train with allow_special_text=True "
                        "(--allow-special-text) to learn it as ordinary text"
                    )
            yield text


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    pattern: str = "gpt4",
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    *,
    backend: TrainBackend = "fast",
    allow_special_text: bool = False,
    bos: str | None = BOS,
    eos: str | None = EOS,
    pad: str | None = PAD,
    name: str = "bpe",
) -> BPETokenizer:
    """Learn a byte-level BPE of exactly `vocab_size` ids (special tokens included) from texts.

    `pattern` names the split regex ('gpt2', 'gpt4' alias 'cl100k', 'o200k'). A role (bos, eos,
    pad) may be None; otherwise it must be one of `special_tokens`.
    """
    special = list(dict.fromkeys(special_tokens))
    if len(special) != len(special_tokens):
        raise ValueError("special_tokens lists a spelling twice")
    for role, spelling in (("bos", bos), ("eos", eos), ("pad", pad)):
        if spelling is not None and spelling not in special:
            raise ValueError(
                f"{role} {spelling!r} is not among the special tokens; add it or pass {role}=None"
            )
    minimum = 256 + len(special)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: it must hold the 256 byte tokens and the "
            f"{len(special)} special tokens; use at least {minimum} (e.g. {max(minimum, 4096)})"
        )
    if backend not in ("fast", "reference"):
        raise ValueError(f"unknown training backend {backend!r}; choose fast or reference")
    pattern_name = canonical_pattern_name(pattern)
    regex_str = get_pattern(pattern_name)
    n_tokens = vocab_size - len(special)  # byte tokens + merges

    checked = _CheckedTexts(texts, special, allow_special_text)
    if backend == "fast":
        ranks = train_ranks_fast(checked, regex_str, n_tokens)
    else:
        ranks = train_ranks(count_words(checked, regex_str), n_tokens)
    if checked.n_chars == 0:
        raise ValueError("the training corpus is empty; give at least some text")
    if len(ranks) < n_tokens:
        raise ValueError(
            f"the corpus has too little distinct text for vocab_size {vocab_size}: it ran out of "
            f"pairs to merge after {len(ranks) - 256} merges; use vocab_size at most "
            f"{len(ranks) + len(special)} or give more text"
        )
    special_ids = {s: n_tokens + k for k, s in enumerate(special)}
    return BPETokenizer(ranks, regex_str, special_ids, name=name, bos=bos, eos=eos, pad=pad)
