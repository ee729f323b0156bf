"""The scorer against a hand-computed full forward: shared and full paths, batching, cropping,
greedy flags, pair encoding, rolling windows."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from gptlab.eval.scorer import (
    Request,
    Window,
    encode_pair,
    rolling_bounds,
    score_continuations,
    score_windows,
)
from gptlab.model.config import ModelConfig, MoEConfig
from gptlab.model.gpt import GPT
from gptlab.tokenizer.char import CharTokenizer

METHODS = ["shared", "rows", "forward"]
VARIANTS = {
    "gpt2": {},
    "llama": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False),
    "alibi_window_softcap": dict(pos_emb="alibi", window=5, logit_softcap=10.0),
    "moe_qk_norm": dict(qk_norm=True, moe=MoEConfig(n_experts=4, top_k=2)),
}


def _model(cfg: ModelConfig, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(dataclasses.replace(cfg, **kw)).eval()


def _by_hand(model: GPT, request: Request) -> list[float]:
    """Log-probabilities of the continuation from one plain forward over context + continuation."""
    ids = list(request.context + request.continuation)
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([ids[:-1]]))[0], dim=-1)  # (T, V)
    start = len(request.context) - 1
    return [logprobs[start + j, t].item() for j, t in enumerate(request.continuation)]


def _requests(g: torch.Generator, n_contexts: int, vocab: int, max_len: int) -> list[Request]:
    """Contexts with 1-4 continuations each, lengths 1..max_len, some continuations 1 token."""

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=g))

    def tokens(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(vocab, (n,), generator=g).tolist())

    out = []
    for _ in range(n_contexts):
        ctx = tokens(draw(1, max_len))
        out += [Request(ctx, tokens(draw(1, max_len // 2))) for _ in range(draw(1, 5))]
    return out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("method", METHODS)
def test_logprobs_equal_a_full_forward(model_cfg, variant, method):
    model = _model(model_cfg, **VARIANTS[variant])
    requests = _requests(torch.Generator().manual_seed(1), 6, model_cfg.vocab_size, 10)
    scores = score_continuations(model, requests, batch_size=5, method=method)
    for request, score in zip(requests, scores, strict=True):
        assert score.token_logprobs == pytest.approx(_by_hand(model, request), abs=1e-5)
        assert not score.cropped


def test_batched_equals_one_by_one_and_shared_equals_separate(model_cfg):
    model = _model(model_cfg)
    requests = _requests(torch.Generator().manual_seed(2), 8, model_cfg.vocab_size, 10)
    one = score_continuations(model, requests, batch_size=1, method="forward")
    for method in METHODS:
        batched = score_continuations(model, requests, batch_size=16, method=method)
        for a, b in zip(one, batched, strict=True):
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)
            assert a.is_greedy == b.is_greedy


def test_shared_context_runs_the_context_once(model_cfg, monkeypatch):
    """Four choices of one context: one prefill of the context, one pass over the choices."""
    model = _model(model_cfg)
    ctx = (1, 2, 3, 4, 5, 6)
    requests = [Request(ctx, (7 + i, 8, 9)) for i in range(4)]
    calls = []
    original = model.forward_cached
    monkeypatch.setattr(
        model, "forward_cached", lambda idx, step: calls.append(idx.shape) or original(idx, step)
    )
    score_continuations(model, requests, batch_size=8)
    assert calls == [torch.Size([1, 6]), torch.Size([4, 2])]


def test_choices_with_a_common_beginning(model_cfg):
    """Choices that begin alike share those positions' output-head rows; each still gets its
    own full forward's log-probabilities."""
    model = _model(model_cfg)
    ctx = (3, 1, 4)
    requests = [
        Request(ctx, (5, 6, 7)),
        Request(ctx, (5, 6, 8)),
        Request(ctx, (5, 9)),
        Request(ctx, (2,)),
    ]
    for method in METHODS:
        for request, score in zip(
            requests, score_continuations(model, requests, method=method), strict=True
        ):
            assert score.token_logprobs == pytest.approx(_by_hand(model, request), abs=1e-5)


def test_requests_longer_than_the_window_are_cropped_from_the_left(model_cfg):
    model = _model(model_cfg)  # seq_len 16
    long_ctx = tuple(range(1, 30))
    requests = [Request(long_ctx, (3, 4)), Request((5,), tuple(range(20)))]
    for method in METHODS:
        first, second = score_continuations(model, requests, method=method)
        kept = (long_ctx + (3, 4))[-17:]
        assert first.cropped and first.token_logprobs == pytest.approx(
            _by_hand(model, Request(kept[:-2], kept[-2:])), abs=1e-5
        )
        # a continuation longer than the window keeps (and scores) its last 16 tokens
        assert second.cropped and len(second.token_logprobs) == 16


def test_greedy_needs_every_token_right(model_cfg):
    model = _model(model_cfg)
    ctx = [1, 2, 3]
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(3):  # the model's own greedy continuation
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    greedy = tuple(ids[3:])
    wrong_first = ((greedy[0] + 1) % model_cfg.vocab_size, *greedy[1:])
    for method in METHODS:
        right, wrong = score_continuations(
            model, [Request(tuple(ctx), greedy), Request(tuple(ctx), wrong_first)], method=method
        )
        assert right.is_greedy and not wrong.is_greedy


def test_encode_pair_moves_the_context_space_and_adds_bos():
    tok = CharTokenizer(list(" abc:"))
    r = encode_pair(tok, "ab: ", "c", bos_id=None)
    assert r.context == tuple(tok.encode_ordinary("ab:"))
    assert r.continuation == tuple(tok.encode_ordinary(" c"))
    with_bos = encode_pair(tok, "ab:", " c", bos_id=99)
    assert with_bos.context == (99, *tok.encode_ordinary("ab:"))
    # no context and no BOS: the first continuation token becomes the context
    empty = encode_pair(tok, "", "abc", bos_id=None)
    assert empty.context == tuple(tok.encode_ordinary("a"))
    assert empty.continuation == tuple(tok.encode_ordinary("bc"))


@pytest.mark.parametrize("n, T, stride", [(2, 4, 4), (10, 4, 4), (10, 4, 1), (11, 4, 3), (5, 8, 2)])
def test_rolling_windows_score_every_token_once_with_context(n, T, stride):
    scored = []
    for lo, end, n_scored in rolling_bounds(n, T, stride):
        assert end - lo <= T and n_scored <= end - lo  # at most T inputs
        scored += range(end - n_scored + 1, end + 1)
    assert scored == list(range(1, n))  # tokens 1..n-1, in order, once each


@pytest.mark.parametrize("method", ["rows", "forward"])
def test_score_windows_equal_a_full_forward(model_cfg, method):
    model = _model(model_cfg)
    ids = tuple(torch.randint(model_cfg.vocab_size, (17,)).tolist())
    windows = [Window(ids, 5), Window(ids[:9], 8), Window(ids[3:5], 1)]
    lps = score_windows(model, windows, batch_size=2, method=method)
    for w, lp in zip(windows, lps, strict=True):
        n = w.n_scored
        assert list(lp) == pytest.approx(
            _by_hand(model, Request(w.tokens[:-n], w.tokens[-n:])), abs=1e-5
        )


def test_document_starts_restart_attention_in_windows(model_cfg):
    """A doc_mask model scores a window with a document start inside it as if the window began
    there: the tokens before the start do not change the later log-probabilities."""
    model = _model(model_cfg, doc_mask=True)
    a, b = (5, 6, 7, 8), (9, 10, 11, 12, 13)
    starts = (True, False, False, False, True, False, False, False)
    [joined] = score_windows(model, [Window(a + b, 4, starts)])
    [alone] = score_windows(model, [Window(b, 4)], method="forward")
    assert list(joined) == pytest.approx(list(alone), abs=1e-5)


def test_scoring_restores_training_mode_and_takes_no_requests(model_cfg):
    model = _model(model_cfg).train()
    score_continuations(model, [Request((1, 2), (3,))])
    assert model.training
    for method in METHODS:
        assert score_continuations(model, [], method=method) == []


def test_under_bf16_autocast_every_method_agrees(model_cfg):
    """Training's compute dtype: the cached paths keep keys and values in autocast's dtype and
    agree with a plain forward under the same autocast."""
    model = _model(model_cfg)
    requests = _requests(torch.Generator().manual_seed(3), 4, model_cfg.vocab_size, 10)

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    base = score_continuations(model, requests, autocast=bf16, method="forward")
    exact = score_continuations(model, requests)
    for method in ("shared", "rows"):
        for a, b, c in zip(
            base,
            score_continuations(model, requests, autocast=bf16, method=method),
            exact,
            strict=True,
        ):
            assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=0.05)
            assert b.token_logprobs == pytest.approx(c.token_logprobs, abs=0.1)
