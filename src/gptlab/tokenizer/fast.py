"""Fast BPE training with Hugging Face `tokenizers` (Rust, multi-threaded), in our vocab layout.

Hugging Face trains; tiktoken encodes (bpe.py). Both only ever see our split pattern, and the
result is plain mergeable ranks, so a tokenizer trained here is indistinguishable from one
trained by reference.py (same merges, same tie rule). Training is configured to match:
the regex split (Oniguruma; see patterns.py for the one spelling it needs), then ByteLevel
without its own regex or prefix space, all 256 bytes as the initial alphabet, no minimum
frequency and no special tokens (we append ours after the merges).

Hugging Face spells tokens in GPT-2's byte alphabet; we map its merges back to raw bytes. Its
trainer may record a merge whose bytes already exist as a token ('ab'+'c' after 'a'+'bc'); we
keep the first, so ranks stay contiguous and every token is distinct.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from gptlab.tokenizer.byte_map import unmap


def train_ranks_fast(texts: Iterable[str], pattern: str, n_tokens: int) -> dict[bytes, int]:
    """Mergeable ranks (token bytes -> id; ids 0..255 are the bytes) of a BPE vocabulary of
    `n_tokens` byte strings learned from `texts`; fewer if the texts run out of pairs."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=n_tokens,
        min_frequency=0,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return ranks_from_merges(merges)


def ranks_from_merges(merges: Iterable[list[str] | str]) -> dict[bytes, int]:
    """Our ranks from merges in GPT-2's byte alphabet (['Ġ', 't'] or 'Ġ t'), in merge order."""
    ranks = {bytes([b]): b for b in range(256)}
    for merge in merges:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = unmap(left) + unmap(right)
        if token not in ranks:
            ranks[token] = len(ranks)
    return ranks
