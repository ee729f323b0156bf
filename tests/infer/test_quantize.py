"""Weight-only int8 (infer/quantize.py): the layer multiplies by its dequantised weight, the
fused CPU kernel agrees with the reference product, a quantised model decodes greedily much as
the fp32 one does, `--quantize int8` runs on sample, and the default `--quantize auto` follows
infer/plan.py's rule."""

from __future__ import annotations

import pytest
import torch
from tests.infer.test_engine import build
from torch import nn

from gptlab.cli.main import main
from gptlab.infer.config import SamplingParams
from gptlab.infer.engine import Engine, cast_for_inference
from gptlab.infer.quantize import Int8Linear, int8_kernel, quantize_int8, quantize_weight


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_quantize_weight_is_per_channel_and_symmetric():
    w = torch.randn(16, 40) * torch.logspace(-3, 1, 16)[:, None]  # rows of very different size
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.shape == (16,)
    assert q.abs().max() == 127 and (q.abs().amax(dim=1) == 127).all()  # each row's max -> 127
    err = (q.float() * s[:, None] - w).abs()
    assert (err <= s[:, None] / 2 + 1e-7).all()  # rounding error at most half a step per row
    assert torch.equal(quantize_weight(-w)[0], -q)
    assert torch.equal(quantize_weight(torch.zeros(3, 4))[0], torch.zeros(3, 4, dtype=torch.int8))


@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_equals_the_dequantised_fp32_product(bias):
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, bias=bias)
    layer = Int8Linear(lin)
    x = torch.randn(5, 3, 64)
    want = x @ layer.dequantized().T + (lin.bias if bias else 0)  # (5, 3, 48)
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
    # and it is close to the original layer: int8 rounding only
    assert (layer(x) - lin(x)).abs().max() < 0.02 * lin(x).abs().max()


@pytest.mark.skipif(not int8_kernel(torch.bfloat16, torch.device("cpu")), reason="no int8 kernel")
def test_fused_bf16_kernel_matches_the_dequantised_product():
    torch.manual_seed(0)
    lin = nn.Linear(128, 96, bias=False)
    layer = Int8Linear(lin, torch.bfloat16)
    assert layer.fused
    x = torch.randn(1, 128).bfloat16()
    want = x.float() @ layer.dequantized().T  # fp32 reference on the same bf16 input
    got = layer(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)  # bf16 output rounding


def test_quantize_int8_swaps_every_linear_and_unties_nothing_else():
    model = build()
    wte = model.wte.weight.clone()
    quantize_int8(model)
    assert not [m for m in model.modules() if type(m) is nn.Linear]
    assert isinstance(model.lm_head, Int8Linear)
    assert torch.equal(model.wte.weight, wte)  # the embedding table stays fp32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantised_greedy_decode_mostly_agrees_with_fp32(dtype):
    params = SamplingParams(temperature=0, max_new_tokens=60)
    ref = Engine(build(), max_batch=1).generate([[1, 2, 3]], params)[0].sequences[0].generated
    model = quantize_int8(cast_for_inference(build(), dtype))
    got = Engine(model, max_batch=1).generate([[1, 2, 3]], params)[0].sequences[0].generated
    agree = sum(a == b for a, b in zip(ref, got, strict=True)) / len(ref)
    assert len(got) == 60 and agree >= 0.8, agree


def test_sample_quantize_int8_flag(cli_env, capsys, text_file):
    train = ["train", "--preset", "tiny", "--train.max_steps", "20"]
    assert main([*train, "--data.dataset", str(text_file), "--train.out_dir", "r"]) == 0
    capsys.readouterr()
    args = ["sample", "r", "--prompt", "th", "--max-new-tokens", "30", "--seed", "7"]
    assert main([*args, "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("th") and len(out) >= 32
    assert main([*args, "--quantize", "int4"]) == 2  # not a choice: a usage error


def test_sample_chat_and_serve_default_to_the_plan_rule(cli_env, capsys, text_file, monkeypatch):
    """No flag: `--quantize auto`, which plan.py's rule resolves per machine. On a CPU with
    AVX-512 the text comes from int8 weights and sample says so on stderr (stdout stays the
    text); `--quantize none` decodes the exact weights, silently. The rule is pinned both ways
    here, so the test means the same on every CPU."""
    from gptlab.infer import load

    train = ["train", "--preset", "tiny", "--train.max_steps", "20"]
    assert main([*train, "--data.dataset", str(text_file), "--train.out_dir", "r"]) == 0
    args = ["sample", "r", "--prompt", "th", "--max-new-tokens", "30", "--seed", "7"]
    avx512_bf16 = frozenset({"avx512f", "avx512bw", "avx512_bf16"})
    for flags, quantized in ((avx512_bf16, True), (frozenset(), False)):
        monkeypatch.setattr(load, "cpu_flags", lambda flags=flags: flags)
        capsys.readouterr()
        assert main(args) == 0
        out, err = capsys.readouterr()
        assert out.startswith("th") and len(out) >= 32
        assert ("int8 weights" in err and "--quantize none" in err) == quantized, err
        assert main([*args, "--quantize", "none"]) == 0
        exact = capsys.readouterr()
        assert exact.err == "" and exact.out.startswith("th")
        assert main([*args, "--quantize", "int8"]) == 0
        assert "int8 weights" not in capsys.readouterr().err  # asked for: nothing to point out
        loaded = load.load_for_inference(cli_env / "r", "best", torch.device("cpu"), "auto", "auto")
        assert loaded.quantized == ("int8" if quantized else None)
        assert ("int8 weights" in loaded.describe()) == quantized
        plain = any(type(m) is nn.Linear for m in loaded.model.modules())
        assert plain != quantized
