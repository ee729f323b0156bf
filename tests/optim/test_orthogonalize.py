import pytest
import torch

from gptlab.optim.orthogonalize import newton_schulz, orthogonalize, polar_express

# Measured on random Gaussian inputs (seed 0): NS5 lands in [0.68, 1.14], Polar Express in
# [0.85, 1.15]; the bands leave a margin for other seeds.
BANDS = {newton_schulz: (0.6, 1.2), polar_express: (0.8, 1.2)}


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (3, 32, 48)])
@pytest.mark.parametrize("fn", [newton_schulz, polar_express])
def test_singular_values_land_near_one(fn, shape):
    G = torch.randn(*shape) * 5.0  # the input scale must not matter
    out = fn(G)
    assert out.shape == G.shape and out.dtype == G.dtype
    lo, hi = BANDS[fn]
    s = torch.linalg.svdvals(out)
    assert s.min() > lo and s.max() < hi, (s.min(), s.max())
    # the singular vectors are G's: out ~ U V^T up to the singular values
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    assert torch.allclose(out, U @ torch.diag_embed(s.new_ones(s.shape)) @ Vh, atol=0.25)


def test_polar_express_is_closer_to_orthogonal_than_newton_schulz():
    G = torch.randn(64, 32)

    def err(x):
        return (torch.linalg.svdvals(x) - 1).abs().max()

    assert err(polar_express(G)) < err(newton_schulz(G))


def test_bf16_runs_and_roughly_agrees():
    G = torch.randn(32, 64)
    out = orthogonalize(G, "polar_express", 5, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert (out.float() - polar_express(G)).abs().max() < 0.1


def test_errors():
    with pytest.raises(ValueError, match="5 steps"):
        polar_express(torch.randn(4, 4), steps=6)
    with pytest.raises(ValueError, match="unknown orthogonalizer"):
        orthogonalize(torch.randn(4, 4), "svd", 5)
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.randn(4))
