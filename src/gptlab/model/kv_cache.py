"""KV cache: the keys and values of tokens already seen, so a new token costs one position's work.

Without a cache, generating token t+1 reruns the model over all t tokens before it (quadratic
work in total). Attention is the only place where positions meet, and a token's key and value
never change once computed (the model is causal), so we keep them: each new token computes its
own q, k, v, appends k and v to the cache, and attends over everything cached.

Layout: for every layer a preallocated k and v of shape (B, Hkv, S, D) in the compute dtype,
S = `capacity` (at most the model's seq_len). Row b holds its tokens at slots
0 .. lengths[b]-1, and a token's slot is its position, so positions start at 0 in every row and
rows of different lengths live side by side (no left padding).

A cached forward feeds T new tokens to a range of rows. Row b's new tokens go to slots
lengths[b] .. lengths[b]+T-1; only its first n_new[b] are real (a batch of prompts of different
lengths is right-padded), the rest are ignored and later overwritten. A query may see the keys
that the model's visibility rule allows (causal, sliding window, attention sinks) among the
slots below lengths[b] + n_new[b].

    cache = KVCache(n_layer, batch, Hkv, capacity, D, device=..., dtype=...)
    step = cache.begin(slice(0, B), T, n_new)   # positions and masks of this forward
    logits = model.forward_cached(idx, step)    # each layer calls step.write(layer, k, v)
    step.commit()                               # lengths[b] += n_new[b]
"""

from __future__ import annotations

import torch

from gptlab.model.attention import alibi_distance_bias, visible


class KVCache:
    """Preallocated keys and values of `batch` rows of up to `capacity` tokens each."""

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        capacity: int,
        head_dim: int,
        *,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch, n_kv_head, capacity, head_dim)  # (B, Hkv, S, D)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.capacity = capacity
        self.lengths = [0] * batch  # tokens held by each row

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    def reset(self, row: int) -> None:
        """Forget row `row` (its slots are simply overwritten later)."""
        self.lengths[row] = 0

    def copy_row(self, src: int, dst: int) -> None:
        """Make row dst a copy of row src: N samples of one prompt share one prefill."""
        n = self.lengths[src]
        for k, v in zip(self.k, self.v, strict=True):
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]
        self.lengths[dst] = n

    def begin(self, rows: slice, T: int, n_new: list[int] | None = None) -> CacheStep:
        """Prepare a forward of T new tokens for rows `rows` (n_new[b] <= T of them real)."""
        starts = self.lengths[rows]
        n_new = [T] * len(starts) if n_new is None else list(n_new)
        if len(n_new) != len(starts) or not all(0 <= n <= T for n in n_new):
            raise ValueError(f"n_new {n_new} must give 0..{T} new tokens for each of the rows")
        if max(starts) + T > self.capacity:
            raise ValueError(
                f"{max(starts)} cached + {T} new tokens exceed the cache capacity "
                f"{self.capacity}; make the cache larger or shift the context"
            )
        return CacheStep(self, rows, starts, T, n_new)


class CacheStep:
    """One cached forward: where the new tokens go, their positions, and what they may see.

    Built by KVCache.begin; the model reads `positions`, each attention layer calls `write`
    and `mask`, and the caller calls `commit` once the forward has run.
    """

    def __init__(
        self, cache: KVCache, rows: slice, starts: list[int], T: int, n_new: list[int]
    ) -> None:
        self.cache, self.rows, self.starts, self.T, self.n_new = cache, rows, starts, T, n_new
        self.B = len(starts)
        self.uniform = len(set(starts)) == 1  # all rows write the same slots
        self.full = all(n == T for n in n_new)  # no right padding
        self.S = max(starts) + T  # key slots in use after the write
        # decided here, in plain Python, so they stay plain bools when torch.compile traces the
        # lengths as symbols (SDPA's is_causal takes no symbolic value)
        plain = self.uniform and self.full
        self.one_query = plain and T == 1  # one query per row that sees every cached key
        self.fresh = plain and T > 1 and starts[0] == 0  # a fresh prefill: the causal mask
        device = cache.device
        self.start = starts[0]  # the write slot of every row when they are uniform
        if self.uniform:
            self.positions = torch.arange(starts[0], starts[0] + T, device=device)  # (T,)
        else:
            start = torch.tensor(starts, device=device)
            self.positions = start[:, None] + torch.arange(T, device=device)  # (B, T)
            # where each row's single new token goes, as indices into a layer's whole cache
            # flattened to (batch * Hkv * S, D): writing into the base tensor itself (not a view
            # of some rows) lets torch.compile update it in place instead of copying all of it
            _, n_kv_head, capacity, _ = cache.k[0].shape
            first = rows.indices(cache.batch)[0]
            row = torch.arange(first, first + self.B, device=device)[:, None]  # (B, 1)
            head = torch.arange(n_kv_head, device=device)  # (Hkv,)
            self.flat_slots = ((row * n_kv_head + head) * capacity + start[:, None]).flatten()
        self._masks: dict[tuple[int | None, int], torch.Tensor] = {}

    @property
    def last_index(self) -> list[int]:
        """Index, among the T new tokens, of each row's last real one (its logits are wanted)."""
        return [max(n - 1, 0) for n in self.n_new]

    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new k, v (B, Hkv, T, D) of `layer`; return all keys and values so far,
        (B, Hkv, S, D) views of the cache."""
        kc, vc = self.cache.k[layer][self.rows], self.cache.v[layer][self.rows]  # views
        if self.uniform:
            kc.narrow(2, self.start, self.T).copy_(k)
            vc.narrow(2, self.start, self.T).copy_(v)
        elif self.T == 1:  # decoding rows at different lengths: one scatter per tensor
            D = k.size(-1)
            for cached, new in ((self.cache.k[layer], k), (self.cache.v[layer], v)):
                cached.view(-1, D).index_copy_(0, self.flat_slots, new.reshape(-1, D))
        else:
            for b, s in enumerate(self.starts):  # a prefill at different lengths (rare)
                kc[b].narrow(1, s, self.T).copy_(k[b])
                vc[b].narrow(1, s, self.T).copy_(v[b])
        return kc.narrow(2, 0, self.S), vc.narrow(2, 0, self.S)

    def simple(self, window: int | None) -> tuple[bool, bool]:
        """(no mask at all, plain causal): the fast cases SDPA handles without a dense mask."""
        if window is not None:
            return False, False
        return self.one_query, self.fresh

    def mask(self, window: int | None, global_tokens: int) -> torch.Tensor:
        """Bool (B or 1, 1, T, S): True where a new token may attend to a cached slot."""
        key = (window, global_tokens)
        if key not in self._masks:
            device = self.cache.device
            slots = torch.arange(self.S, device=device)  # (S,)
            q = self.positions[..., :, None]  # (T, 1) or (B, T, 1)
            ok = visible(q, slots, window, global_tokens)  # (T, S) or (B, T, S)
            if not self.full:
                ends = torch.tensor(self.starts, device=device) + torch.tensor(
                    self.n_new, device=device
                )  # (B,)
                ok = ok & (slots < ends[:, None, None])  # padding is never a key
            self._masks[key] = ok[None, None] if ok.dim() == 2 else ok[:, None]
        return self._masks[key]

    def alibi(self, slopes: torch.Tensor) -> torch.Tensor:
        """ALiBi's bias -m_h * (i - j) for these queries and slots: (B or 1, H, T, S)."""
        slots = torch.arange(self.S, device=slopes.device)
        q = self.positions if self.positions.dim() == 2 else self.positions[None]  # (B|1, T)
        return alibi_distance_bias(slopes, q[:, :, None] - slots)

    def commit(self) -> None:
        """The forward ran: the rows now hold their new real tokens."""
        lengths = self.cache.lengths
        for b, row in enumerate(range(*self.rows.indices(len(lengths)))):
            lengths[row] = self.starts[b] + self.n_new[b]
