"""The inference engine: prefill, then decode steps over a KV cache, for many requests at once.

    engine = Engine(model, tokenizer, max_batch=8)
    req = engine.submit(prompt_ids, SamplingParams(temperature=0.8, max_new_tokens=100), n=2)
    while engine.busy:
        for event in engine.step():   # a token (and its text) for every running sequence
            ...
    req.sequences[0].text, req.sequences[0].finish_reason

A request is one prompt and n samples of it. The cache has `max_batch` rows; a sample occupies
one row from its first token to its last. When rows are free, a waiting request is admitted:
its prompt runs once through the model (prefill) into one row, which is copied to its other
n-1 rows, and each sample draws its first token from those logits. Every step then feeds the
latest token of every running sample through the model at once (decode: one position per row)
and draws the next. Samples finish on EOS, a stop token or string, or max_new_tokens, and free
their rows for the next waiting request (continuous batching). Rows of different lengths decode
together; model/kv_cache.py explains how.

The records it fills in and hands back (Request, Sequence, Event) live in infer/request.py.

`compile=True` runs each decode step through torch.compile: the first steps compile (seconds
to a minute; `warm_up()` does it ahead), then decoding runs with fused kernels and far less
per-operation overhead, which is what limits batch-1 decoding on a CPU.

Past the context: a row holds at most `capacity` tokens (<= the model's seq_len). When a sample
needs more, `overflow="shift"` keeps its last capacity/2 tokens and recomputes the cache from
them (positions start again at 0, so every architecture stays exactly what it was trained on;
it is nanoGPT's cropping, done once per capacity/2 tokens instead of at every token);
`overflow="error"` finishes the sample with reason "length". A prompt longer than the context
is cropped to its last `capacity` tokens under "shift" and refused under "error";
`Request.prompt_tokens_dropped` counts the prompt tokens a request lost either way.

Failures stay with their request (issue 15: a bad seed once took cache rows and never gave
them back, and every later request failed). Admission takes rows only after what can fail
without them (seeds, generators) has succeeded; if a prefill, a shift or a draw then raises,
the request's rows are freed, `Request.error` holds the exception and its events are dropped,
while the other requests carry on. A decode step is shared, so its failure fails the requests
in it, and their rows are freed the same way.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from gptlab.infer import fast_decode
from gptlab.infer.config import SamplingParams
from gptlab.infer.fast_decode import FastDecode
from gptlab.infer.request import Event, Request, Sequence, raise_failed
from gptlab.infer.sampling import Sampler
from gptlab.infer.text import TextStream
from gptlab.model.kv_cache import CacheStep, KVCache
from gptlab.seeding import mix_seed
from gptlab.tokenizer.base import Tokenizer

log = logging.getLogger(__name__)
Overflow = Literal["shift", "error"]


def cast_for_inference(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Parameters to the compute dtype (no autocast needed at inference); buffers such as the
    rotary tables stay fp32. Returns the model in eval mode."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model.eval()


class Engine:
    """Generation for a GPT over a preallocated KV cache of `max_batch` rows."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer | None = None,
        *,
        max_batch: int = 8,
        capacity: int | None = None,
        overflow: Overflow = "shift",
        compile: bool = False,
    ) -> None:
        cfg = model.cfg
        capacity = cfg.seq_len if capacity is None else capacity
        if not 2 <= capacity <= cfg.seq_len:  # a shift keeps >= 1 token and adds the next
            raise ValueError(f"cache capacity must be in 2..{cfg.seq_len}, got {capacity}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        weight = model.wte.weight
        self.model, self.tokenizer, self.overflow = model, tokenizer, overflow
        # torch.compile fuses a decode step's many small kernels and removes most per-op Python
        # overhead. Batch size and cache length are dynamic shapes, so a few compilations cover
        # every step; a prefill is one big forward per request and runs eagerly. On a CPU the
        # compiled step is also called through C++ (inductor's cpp_wrapper) rather than a
        # Python wrapper, which saves a few hundred microseconds per token at batch 1.
        self.decode_forward = model.forward_cached
        if compile:
            options = {"cpp_wrapper": True} if weight.device.type == "cpu" else None
            self.decode_forward = torch.compile(model.forward_cached, options=options)
        self.device, self.vocab_size = weight.device, cfg.vocab_size
        self.cache = KVCache(
            cfg.n_layer, max_batch, cfg.kv_heads, capacity, cfg.head_dim,
            device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        self.capacity, self.max_batch = capacity, max_batch
        # rows at one length decoding one token each (always so at batch 1) take the lean step
        # (infer/fast_decode.py); a compiled engine compiles the general forward instead
        lean = not compile and fast_decode.supported(cfg)
        self.fast = FastDecode(model, self.cache) if lean else None
        if self.fast is not None:
            self.decode_forward = self._lean_forward
        self.eos = tokenizer.eos_id if tokenizer is not None else None
        self.waiting: deque[Request] = deque()
        self.running: list[Sequence] = []  # sorted by row
        self.free_rows = list(range(max_batch))
        self._ids = itertools.count()
        self._sampler: tuple[list[Sequence], Sampler] | None = None
        self._seen: torch.Tensor | None = None  # (max_batch, V) for penalties, made on demand
        self._counts: torch.Tensor | None = None

    # -- the public interface ----------------------------------------------------------------

    def submit(self, prompt: list[int], params: SamplingParams, n: int = 1) -> Request:
        """Queue a prompt (token ids) for n samples; the request runs during later steps."""
        if not prompt:
            raise ValueError("the prompt has no tokens; start it with at least one (e.g. BOS)")
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"n = {n} samples must be between 1 and max_batch {self.max_batch}")
        if bad := [t for t in prompt if not 0 <= t < self.vocab_size]:
            raise ValueError(
                f"prompt token {bad[0]} is outside the vocabulary 0..{self.vocab_size - 1}"
            )
        if len(prompt) > self.capacity and self.overflow == "error":
            raise ValueError(
                f"the prompt has {len(prompt)} tokens but the context holds {self.capacity}; "
                "shorten the prompt"
            )
        cropped = max(0, len(prompt) - self.capacity)  # the model only sees its last context
        request = Request(next(self._ids), list(prompt[cropped:]), params, n, cropped)
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request (a client went away); its rows are freed at the next step."""
        request.cancelled = True

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Admit what fits, then decode one token for every running sample."""
        events: list[Event] = []
        self._drop_cancelled()
        while self.waiting and len(self.free_rows) >= self.waiting[0].n:
            self._admit(self.waiting.popleft(), events)
        if self.running:
            try:
                self._decode(events)
            except Exception as e:  # the step is shared: fail the requests in it
                for request in {s.request.id: s.request for s in self.running}.values():
                    self._fail(request, e)
        return [e for e in events if e.request.error is None]

    def stream(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams], n: int = 1
    ) -> Iterator[Event]:
        """Run these prompts to completion, yielding events as tokens come; a request that
        failed raises its error at the end."""
        requests = self._submit_all(prompts, params, n)
        while self.busy:
            yield from self.step()
        raise_failed(requests)

    def warm_up(self) -> None:
        """Run a few short generations so a compiled engine does its compiling now, not on a
        user's first request: prefills of several lengths, and decode steps at several cache
        lengths and batch sizes, with rows at one length and at different lengths."""
        params = SamplingParams(temperature=0, max_new_tokens=3)
        for b in range(1, min(3, self.max_batch) + 1):
            varied = [tuple(range(1, b + 1))] if b > 1 else []  # rows at different lengths
            for lengths in [(b,) * b, *varied]:
                self.generate([[0] * n for n in lengths], params)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams], n: int = 1
    ) -> list[Request]:
        """Run these prompts to completion; the requests hold each sample's tokens and text (a
        request that failed raises its error)."""
        requests = self._submit_all(prompts, params, n)
        while self.busy:
            self.step()
        raise_failed(requests)
        return requests

    def _submit_all(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams], n: int
    ) -> list[Request]:
        """One request per prompt, with one params for all or one each."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        return [self.submit(p, sp, n) for p, sp in zip(prompts, plist, strict=True)]

    # -- prefill -----------------------------------------------------------------------------

    def _admit(self, request: Request, events: list[Event]) -> None:
        """Give a request its rows: one prefill, copied to its n rows, and each sample's first
        token. What can fail without rows comes first; a failure after that frees them."""
        p = request.params
        seed = p.seed if p.seed is not None else int(torch.randint(2**62, ()).item())
        seqs = []
        for i in range(request.n):
            g = torch.Generator().manual_seed(mix_seed(seed, i))
            stream = TextStream(self.tokenizer, p.stop) if self.tokenizer is not None else None
            seqs.append(Sequence(request, i, list(request.prompt), g, stream))
        rows = sorted(self.free_rows)[: request.n]
        self.free_rows = [r for r in self.free_rows if r not in rows]
        for seq, row in zip(seqs, rows, strict=True):
            seq.row = row
        request.sequences = seqs
        self.running = sorted(self.running + seqs, key=lambda s: s.row)
        try:
            logits = self._prefill(rows[0], request.prompt)  # (1, V)
            for r in rows[1:]:
                self.cache.copy_row(rows[0], r)
            if p.penalised:
                for r in rows:
                    self._reset_penalties(r, request.prompt)
            if p.max_new_tokens == 0:
                for seq in request.sequences:
                    self._finish(seq, "length", events)
                return
            first = logits.expand(request.n, -1)  # (n, V): the samples share the prompt's logits
            self._sample(request.sequences, first, events)
        except Exception as e:
            self._fail(request, e)

    def _prefill(self, row: int, tokens: list[int]) -> torch.Tensor:
        """Fill cache row `row` with tokens; logits (1, V) for the token after them."""
        self.cache.reset(row)
        idx = torch.tensor([tokens], dtype=torch.long, device=self.device)  # (1, T)
        step = self.cache.begin(slice(row, row + 1), len(tokens))
        logits = self.model.forward_cached(idx, step)  # (1, V)
        step.commit()
        return logits

    # -- decode ------------------------------------------------------------------------------

    def _decode(self, events: list[Event]) -> None:
        for seq in list(self.running):
            if seq.request.error is None and self.cache.lengths[seq.row] == self.capacity:
                try:
                    self._shift(seq, events)
                except Exception as e:  # a shift is a prefill of this sample alone
                    self._fail(seq.request, e)
        live = [s for s in self.running if not s.finish_reason]
        if not live:
            return
        # rows 0 .. hi-1 decode together; free rows among them decode a dummy token. Always
        # starting at row 0 costs little (a step reads every weight once, whatever the batch)
        # and keeps a compiled step from specialising on where the rows start.
        hi = live[-1].row + 1
        tokens = [0] * hi
        for s in live:
            tokens[s.row] = s.tokens[-1]
        idle = [r for r in range(hi) if r in self.free_rows]
        for r in idle:
            self.cache.lengths[r] = 0
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]  # (B, 1)
        step = self.cache.begin(slice(0, hi), 1)
        logits = self.decode_forward(idx, step)  # (B, V)
        step.commit()
        for r in idle:
            self.cache.lengths[r] = 0
        if idle:
            logits = logits[torch.tensor([s.row for s in live], device=self.device)]
        self._sample(live, logits, events)

    def _lean_forward(self, idx: torch.Tensor, step: CacheStep) -> torch.Tensor:
        """A decode forward (B, 1) -> (B, V): the lean step when the rows are at one length
        (rows always start at 0 here), else the model's general cached forward."""
        if step.one_query and step.rows.start in (0, None):
            return self.fast.step(idx[:, 0], step.start)  # (B,) -> (B, V)
        return self.model.forward_cached(idx, step)

    def _shift(self, seq: Sequence, events: list[Event]) -> None:
        """The row is full: keep the last capacity/2 tokens and recompute the cache from them."""
        if self.overflow == "error":
            self._finish(seq, "length", events)
            return
        keep = self.capacity // 2  # >= 1, and leaves room for the newest token
        start = len(seq.tokens) - 1 - keep
        self._prefill(seq.row, seq.tokens[start:-1])  # the newest token is fed next
        seq.window_start = start

    # -- sampling and bookkeeping ------------------------------------------------------------

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor, events: list[Event]) -> None:
        # the per-row settings become tensors once per set of rows, not at every step (compared
        # by identity: a finished Sequence's id() may be reused by a new one)
        cached = self._sampler
        if (
            cached is None
            or len(cached[0]) != len(seqs)
            or any(a is not b for a, b in zip(cached[0], seqs, strict=True))
        ):
            sampler = Sampler(
                [s.request.params for s in seqs],
                [s.generator for s in seqs],
                self.device,
                self.vocab_size,
            )
            self._sampler = cached = (list(seqs), sampler)
        sampler = cached[1]
        seen = counts = None
        if sampler.penalised:
            rows = torch.tensor([s.row for s in seqs], device=self.device)
            seen, counts = self._seen[rows], self._counts[rows]
        for seq, token in zip(seqs, sampler(logits, seen, counts), strict=True):
            if seq.request.error is None:
                try:
                    self._accept(seq, token, events)
                except Exception as e:  # e.g. its text: fails this request, not the batch
                    self._fail(seq.request, e)

    def _accept(self, seq: Sequence, token: int, events: list[Event]) -> None:
        p = seq.request.params
        if token == self.eos or token in p.stop_token_ids:
            self._finish(seq, "stop", events)
            return
        seq.tokens.append(token)
        seq.generated.append(token)
        if p.penalised:
            self._seen[seq.row, token] = True
            self._counts[seq.row, token] += 1
        piece = seq.stream.push(token) if seq.stream is not None else ""
        seq.text += piece
        if seq.stream is not None and seq.stream.stopped:
            self._finish(seq, "stop", events, token, piece)
        elif len(seq.generated) >= p.max_new_tokens:
            self._finish(seq, "length", events, token, piece)
        else:
            events.append(Event(seq.request, seq.index, token, piece, None))

    def _finish(
        self,
        seq: Sequence,
        reason: str,
        events: list[Event],
        token: int | None = None,
        piece: str = "",
    ) -> None:
        """Mark seq finished (its last event carries the reason) and free its row."""
        rest = seq.stream.finish() if seq.stream is not None else ""
        seq.text += rest
        seq.finish_reason = reason
        events.append(Event(seq.request, seq.index, token, piece + rest, reason))
        self._release(seq)

    def _fail(self, request: Request, error: Exception) -> None:
        """The request failed: record why and free its rows (its events are dropped)."""
        log.warning("request %d failed: %r", request.id, error)
        request.error = error
        for seq in request.sequences:
            seq.finish_reason = seq.finish_reason or "error"
            self._release(seq)

    def _release(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
            self.cache.reset(seq.row)
            self.free_rows.append(seq.row)

    def _drop_cancelled(self) -> None:
        self.waiting = deque(r for r in self.waiting if not r.cancelled)
        for seq in [s for s in self.running if s.request.cancelled]:
            seq.finish_reason = seq.finish_reason or "cancelled"
            self._release(seq)

    def _reset_penalties(self, row: int, prompt: list[int]) -> None:
        if self._seen is None:
            shape = (self.max_batch, self.vocab_size)
            self._seen = torch.zeros(shape, dtype=torch.bool, device=self.device)
            self._counts = torch.zeros(shape, device=self.device)
        self._seen[row] = False
        self._seen[row, torch.tensor(prompt, device=self.device)] = True
        self._counts[row] = 0
