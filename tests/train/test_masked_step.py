"""Chat finetuning's loss normalisation (train/step.py, masked=True): the step's loss is the
mean over every supervised target of the global batch, whatever the micro-batches hold; a
step with no supervised target is skipped and counted."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT, masked_cross_entropy
from gptlab.runtime import make_runtime
from gptlab.train.health import HealthMonitor
from gptlab.train.step import Stepper

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=40, dropout=0.0)


def _stepper(masked: bool = True) -> Stepper:
    torch.manual_seed(0)
    model = GPT(CFG)
    return Stepper(
        model=model,
        wrapped=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        health=HealthMonitor(max_bad_steps=3),
        runtime=make_runtime("cpu", "float32"),
        grad_clip=0.0,
        seed=0,
        masked=masked,
    )


def _masked_batches() -> list[tuple[torch.Tensor, torch.Tensor, None]]:
    """Two micro-batches with very different numbers of supervised targets (-1 elsewhere)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for keep in (3, 40):  # supervised targets in micro-batch 0 and 1
        x = torch.randint(CFG.vocab_size, (4, CFG.seq_len), generator=g)
        y = torch.randint(CFG.vocab_size, (4, CFG.seq_len), generator=g)
        flat = y.flatten()
        flat[torch.randperm(flat.numel(), generator=g)[keep:]] = -1
        out.append((x, flat.view_as(y), None))
    return out


def test_loss_is_the_mean_over_supervised_targets_of_the_global_batch():
    batches = _masked_batches()
    s = _stepper()
    result = s.step(iter(batches), accum=2, micro_seen=0)

    torch.manual_seed(0)
    ref = GPT(CFG)  # the unpacked, unaccumulated computation: one forward over all rows
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    logits = ref(x)  # (8, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1)
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.5 * p.grad
    assert result.targets == 43
    assert math.isclose(result.ce, loss.item(), rel_tol=1e-5)
    for (name, p), q in zip(s.model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)

    # the mean of the two micro-batch means weights 3 targets like 40: a different loss
    per_micro = [F.cross_entropy(ref(b[0]).flatten(0, 1), b[1].flatten(), ignore_index=-1)
                 for b in batches]  # fmt: skip
    assert abs(sum(per_micro).item() / 2 - loss.item()) > 1e-3


def test_a_step_without_supervised_targets_is_skipped_and_counted():
    s = _stepper()
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    x = torch.randint(CFG.vocab_size, (2, CFG.seq_len))
    empty = [(x, torch.full_like(x, -1), None)] * 2
    result = s.step(iter(empty), accum=2, micro_seen=0)
    assert result.empty and result.skipped and result.targets == 0
    assert s.empty_steps == 1 and result.warnings
    for k, v in s.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the next, non-empty step trains normally
    result = s.step(iter(_masked_batches()), accum=2, micro_seen=2)
    assert not result.skipped and math.isfinite(result.loss) and s.empty_steps == 1


def test_all_ignored_targets_give_zero_loss_and_zero_gradient():
    logits = torch.randn(6, 10, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((6,), -1))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
