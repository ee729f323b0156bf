"""Which parameter goes to which optimizer group, decided from (name, parameter) pairs alone.

Muon is built for the hidden weight matrices, whose inputs and outputs are both activations:
attention qkv/proj, MLP fc/proj, MoE experts (E, in, out: each expert is orthogonalised on its
own), routers, MTP blocks. Everything else stays on AdamW:
- embeddings (`wte`, `wpe`) are lookup tables: one row per token, not a linear map, so a
  spectral-norm step makes no sense for them; the output head (`lm_head`) is the opposite end
  and its rows are per-token too (the Muon authors keep both on AdamW);
- vectors and scalars (norm gains, biases, including the MoE experts' stacked (E, n) biases).

Group names: "muon" (Muon, decays), "decay" (AdamW, decays), "no_decay" (AdamW). The plain
AdamW recipe keeps its original rule, by shape alone: dim >= 2 decays. A tensor shared under two
names (tied embeddings) is placed once, under its first name.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

EMBEDDING_AND_HEAD = ("wte", "wpe", "lm_head")  # module names whose weights stay on AdamW
BIAS_NAMES = ("bias", "b_in", "b_out")  # parameter names of biases (MoE stacks them as (E, n))

GROUP_KINDS = {"muon": "muon", "decay": "adamw", "no_decay": "adamw"}


def unique_trainable(
    named_params: Iterable[tuple[str, nn.Parameter]],
) -> list[tuple[str, nn.Parameter]]:
    """Trainable (name, parameter) pairs, each tensor once (the first name wins)."""
    seen: set[int] = set()
    out = []
    for name, p in named_params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def is_hidden_matrix(name: str, p: nn.Parameter) -> bool:
    """True for the weights Muon handles: matrices (or expert stacks) inside the network."""
    parts = name.split(".")
    module = parts[-2] if len(parts) > 1 else ""
    return p.dim() >= 2 and module not in EMBEDDING_AND_HEAD and parts[-1] not in BIAS_NAMES


def group_of(name: str, p: nn.Parameter, optimizer: str) -> str:
    """Group name of one parameter under optimizer `adamw` or `muon`."""
    if optimizer == "muon" and is_hidden_matrix(name, p):
        return "muon"
    if optimizer == "muon" and p.dim() >= 2 and name.split(".")[-1] in BIAS_NAMES:
        return "no_decay"  # stacked expert biases are vectors, not matrices
    return "decay" if p.dim() >= 2 else "no_decay"


def split_params(
    named_params: Iterable[tuple[str, nn.Parameter]], optimizer: str
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """{group name: [(name, parameter), ...]}: "decay" and "no_decay", plus "muon" for Muon.

    Every group is present (possibly empty) so the group layout, and hence a saved optimizer
    state, depends only on the optimizer, not on the model.
    """
    names = ("muon", "decay", "no_decay") if optimizer == "muon" else ("decay", "no_decay")
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in names}
    for name, p in unique_trainable(named_params):
        groups[group_of(name, p, optimizer)].append((name, p))
    return groups
