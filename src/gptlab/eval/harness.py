"""lm-evaluation-harness adapter: our model and tokenizer as an `lm_eval.api.model.LM`.

Needs the optional extra (`pip install 'gptlab[eval]'`, lm_eval >= 0.4.9); nothing else in
gptlab imports this module. The three request types run on our own machinery, so the harness's
numbers and `gptlab eval`'s come from one scorer:

    loglikelihood          scorer.score_continuations on encode_pair (the harness's own
                           tokenization rule, scorer.py), context shared across choices
    loglikelihood_rolling  scorer.rolling_windows with stride = seq_len: the harness's
                           disjoint windows, the last one full
    generate_until         the KV-cache Engine (infer/engine.py), greedy unless the task asks
                           for sampling, stopping at the task's `until` strings

`register()` makes the class known to the harness as "gptlab", so
`simple_evaluate(model="gptlab", model_args="pretrained=runs/x")` works as well as passing an
instance. `run_harness` is what `gptlab eval --harness` calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM
from torch import nn

from gptlab.eval.scorer import (
    encode_pair,
    rolling_windows,
    score_continuations,
    score_windows,
)
from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine
from gptlab.infer.load import load_for_inference
from gptlab.tokenizer.base import Tokenizer

NAME = "gptlab"


class GptlabLM(LM):
    """A gptlab model for the harness: give a loaded model and tokenizer, or `pretrained` (a run
    or checkpoint directory) to load one."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Tokenizer | None = None,
        checkpoint: str = "best",
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int | str = 32,
        add_bos: bool | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        max_gen_toks: int = 256,
    ) -> None:
        super().__init__()
        if model is None or tokenizer is None:
            if pretrained is None:
                raise ValueError(
                    "GptlabLM needs `pretrained` (a run directory), or model and tokenizer"
                )
            loaded = load_for_inference(Path(pretrained), checkpoint, torch.device(device), dtype)
            model, tokenizer = loaded.model, loaded.tokenizer
        self.model, self.tokenizer = model, tokenizer
        self.add_bos = tokenizer.bos_id is not None if add_bos is None else bool(add_bos)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 32
        self.autocast, self.max_gen_toks = autocast, int(max_gen_toks)
        self._device = model.wte.weight.device

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_id if self.add_bos else None

    @property
    def tokenizer_name(self) -> str:
        return f"gptlab-{self.tokenizer.kind}-{self.tokenizer.fingerprint()}"

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, c, x, self.bos_id) for c, x in _args(requests)]
        scores = score_continuations(
            self.model, pairs, batch_size=self.batch_size, autocast=self.autocast
        )
        return [(s.logprob, s.is_greedy) for s in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        T = self.model.cfg.seq_len
        docs = []
        for (text,) in _args(requests):
            ids = self.tokenizer.encode_ordinary(text)
            docs.append(rolling_windows([self.bos_id, *ids] if self.add_bos else ids, T, T))
        flat = [w for windows in docs for w in windows]
        lps = score_windows(self.model, flat, batch_size=self.batch_size, autocast=self.autocast)
        out, at = [], 0
        for windows in docs:
            out.append(float(sum(lp.sum() for lp in lps[at : at + len(windows)])))
            at += len(windows)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        engine = Engine(self.model, self.tokenizer, max_batch=self.batch_size)
        prompts, params = [], []
        for context, gen_kwargs in _args(requests):
            kw = dict(gen_kwargs)
            until = kw.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            sample = kw.get("do_sample", False) and float(kw.get("temperature", 0.0)) > 0
            params.append(
                SamplingParams(
                    temperature=float(kw["temperature"]) if sample else 0.0,
                    max_new_tokens=int(kw.get("max_gen_toks", self.max_gen_toks)),
                    stop=tuple(u for u in until if u),
                    seed=0,
                )
            )
            ids = self.tokenizer.encode_ordinary(context)
            if self.add_bos:
                ids = [self.bos_id, *ids]
            prompts.append(ids or self.tokenizer.encode_ordinary("\n"))  # as infer.load does
        was_training = self.model.training
        self.model.eval()
        try:
            done = engine.generate(prompts, params)
        finally:
            self.model.train(was_training)
        return [r.sequences[0].text for r in done]


def _args(requests: Sequence[Any]) -> list[tuple]:
    return [r.args if hasattr(r, "args") else tuple(r) for r in requests]


def register() -> None:
    """Make GptlabLM the harness's model "gptlab" (idempotent)."""
    from lm_eval.api.registry import register_model

    register_model(NAME)(GptlabLM)


def run_harness(
    lm: GptlabLM,
    tasks: Sequence[str],
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    include_paths: Sequence[Path] = (),
    log_samples: bool = False,
    bootstrap_iters: int = 1000,
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on our model; its results dict (per-example `samples` only
    with log_samples). `include_paths`: folders of task YAML files (tasks on local data)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    register()
    manager = TaskManager(include_path=[str(p) for p in include_paths] or None)
    return simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=log_samples,
        bootstrap_iters=bootstrap_iters,
    )
