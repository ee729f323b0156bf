"""Weight-name tables applied in either direction, one tensor at a time.

An architecture file (gpt2.py, llama.py) describes its checkpoint as a list of `Rule`s: one of
our parameters is the dim-0 concatenation of one or more Hugging Face tensors, each maybe
transposed (GPT-2's Conv1D stores (in, out)). Importing reads the HF tensors of a rule and
builds ours; exporting splits ours back. A side that does not exist in one format is filled
with a constant (zero biases, unit norm gains), which is only done where the constant is what
the other side computes. Every key and every shape is checked against the table before a single
tensor is converted, so a mismatch is one line naming the first few offenders.

Embedding and head rows: our matrices have `padded_vocab` rows (fast matmul shapes), HF's
exactly `vocab_size`; import pads with zero rows (their logits are cropped, never used), export
crops them off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import torch

from gptlab.errors import GptlabError
from gptlab.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Rule:
    """Our parameter `ours` == cat([T(theirs[0]), T(theirs[1]), ...], dim 0), T = transpose
    if `transpose`. `split` gives each part's rows in ours; `vocab` marks rows padded to
    padded_vocab. ours == "" or theirs == () means that side is absent and is `fill`."""

    ours: str
    theirs: tuple[str, ...]
    shape: tuple[int, ...]  # our shape (unpadded rows for `vocab` rules)
    split: tuple[int, ...] = ()
    transpose: bool = False
    vocab: bool = False
    fill: float = 0.0

    def their_shapes(self) -> list[tuple[int, ...]]:
        if not self.theirs:
            return []
        sizes = self.split or (self.shape[0],)
        shapes = [(n, *self.shape[1:]) for n in sizes]
        return [tuple(reversed(s)) if self.transpose else s for s in shapes]


def _first(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(sorted(names)[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def check_keys(
    rules: Sequence[Rule],
    names: set[str],
    shape_of: Callable[[str], tuple[int, ...]],
    ignored: Callable[[str], bool],
    where: str,
) -> None:
    """GptlabError unless the source holds exactly the HF tensors of `rules` (plus ignorable
    ones), each of the expected shape."""
    expected = {
        name: shape for r in rules for name, shape in zip(r.theirs, r.their_shapes(), strict=True)
    }
    missing = [n for n in expected if n not in names]
    unexpected = [n for n in names if n not in expected and not ignored(n)]
    if missing:
        raise GptlabError(
            f"{where} lacks {len(missing)} weights the config needs: {_first(missing)}; the "
            "checkpoint does not match its config.json"
        )
    if unexpected:
        raise GptlabError(
            f"{where} has {len(unexpected)} weights its architecture does not use: "
            f"{_first(unexpected)}; gptlab cannot map them (a modified or other architecture?)"
        )
    for name, shape in expected.items():
        if tuple(shape_of(name)) != tuple(shape):
            raise GptlabError(
                f"{where}: {name} has shape {tuple(shape_of(name))} but the config implies "
                f"{tuple(shape)}; the checkpoint does not match its config.json"
            )


def import_tensor(rule: Rule, read: Callable[[str], torch.Tensor], cfg: ModelConfig):
    """Our fp32 tensor for `rule` from the HF tensors `read` returns."""
    if not rule.theirs:
        return torch.full(rule.shape, rule.fill, dtype=torch.float32)
    parts = []
    for name in rule.theirs:
        t = read(name)
        parts.append((t.t() if rule.transpose else t).float())
    out = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    if rule.vocab and cfg.padded_vocab > out.shape[0]:
        pad = out.new_zeros(cfg.padded_vocab - out.shape[0], *out.shape[1:])
        out = torch.cat([out, pad], dim=0)  # (V, C) -> (padded V, C)
    return out.contiguous()


def import_tensors(
    rules: Sequence[Rule], read: Callable[[str], torch.Tensor], cfg: ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, tensor) for every parameter, one at a time."""
    for rule in rules:
        if rule.ours:
            yield rule.ours, import_tensor(rule, read, cfg)


def export_entries(
    rules: Sequence[Rule], dtype: torch.dtype = torch.float32
) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(HF name, dtype, shape) of every tensor an export writes, in file order."""
    return [
        (name, dtype, shape)
        for r in rules
        for name, shape in zip(r.theirs, r.their_shapes(), strict=True)
    ]


def exporter(
    rules: Sequence[Rule], read_ours: Callable[[str], torch.Tensor], dtype=torch.float32
) -> Callable[[str], torch.Tensor]:
    """produce(HF name) -> tensor, reading each of our tensors once (the last one is kept while
    its parts are written, so a fused qkv is read once, not three times)."""
    owner = {name: r for r in rules for name in r.theirs}
    held: dict[str, torch.Tensor] = {}

    def produce(name: str) -> torch.Tensor:
        rule = owner[name]
        i = rule.theirs.index(name)
        shape = rule.their_shapes()[i]
        if not rule.ours:
            return torch.full(shape, rule.fill, dtype=dtype)
        if rule.ours not in held:
            held.clear()
            held[rule.ours] = read_ours(rule.ours)
        ours = held[rule.ours]
        if rule.vocab:
            ours = ours[: rule.shape[0]]  # crop the padding rows
        sizes = rule.split or (ours.shape[0],)
        part = ours.split(list(sizes), dim=0)[i]
        part = part.t() if rule.transpose else part
        return part.to(dtype).contiguous().clone()

    return produce
