"""Approximate orthogonalisation: G = U S V^T  ->  ~U V^T, with matrix products only.

Muon needs the nearest semi-orthogonal matrix to its momentum. An SVD is exact but slow on
accelerators, so we apply an odd polynomial p to the singular values instead: for
p(x) = a x + b x^3 + c x^5, p(X) = a X + (b A + c A^2) X with A = X X^T leaves U and V alone and
maps every singular value s to p(s). Scaling X first so all s <= 1, and iterating p, pushes
every s towards 1.

- `newton_schulz`: one fixed quintic, a=3.4445, b=-4.7750, c=2.0315 (Jordan et al. 2024). The
  coefficients trade accuracy for speed: small singular values grow fast (slope 3.4 at 0) and
  the result only lands in a band around 1 (about [0.7, 1.2]), which is enough for Muon.
- `polar_express`: a different quintic per step, each the minimax-optimal one for the interval
  the singular values occupy at that step (Amsel et al. 2025, arXiv:2505.16932). The table
  below is their 5-step schedule computed with a 2% safety margin, which is why the input is
  divided by 1.02 ||X||_F. It lands closer to 1 than Newton-Schulz in the same 5 steps.

Both work on a (..., m, n) batch (MoE stacks experts as (E, in, out)) and iterate on the wide
orientation (m <= n) so that A = X X^T is the smaller Gram matrix. They compute in `dtype`
(bf16 is fine on accelerators: the iteration is self-correcting) and return that dtype.
"""

from __future__ import annotations

import torch

NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)

# (a, b, c) for steps 1..5 of Polar Express, arXiv:2505.16932 (safety factor 1.02)
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02


def odd_quintic_iterations(
    G: torch.Tensor,
    coeffs: list[tuple[float, float, float]],
    safety: float = 1.0,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Apply X <- a X + (b A + c A^2) X, A = X X^T, once per (a, b, c), to G / (safety ||G||_F)."""
    if G.dim() < 2:
        raise ValueError(f"orthogonalisation needs a matrix or a batch of them, got {G.shape}")
    X = G.to(dtype or G.dtype)
    wide = X.size(-2) <= X.size(-1)
    if not wide:
        X = X.mT  # (..., n, m): iterate with the smaller Gram matrix
    lead, (m, n) = X.shape[:-2], X.shape[-2:]
    X = X.reshape(-1, m, n)  # (k, m, n): one batch of matrices, so each product is one bmm
    # ||X||_F >= largest singular value, so afterwards every singular value is <= 1 / safety
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * safety + eps)
    for a, b, c in coeffs:
        A = torch.bmm(X, X.mT)  # (k, m, m)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2, scaled inside the product
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X  (k, m, n)
    X = X.reshape(*lead, m, n)
    return X if wide else X.mT


def newton_schulz(
    G: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """~U V^T of G by `steps` iterations of the fixed Newton-Schulz quintic."""
    return odd_quintic_iterations(G, [NEWTON_SCHULZ_COEFFS] * steps, dtype=dtype)


def polar_express(
    G: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """~U V^T of G by the first `steps` (<= 5) Polar Express quintics.

    The schedule is greedy (each step optimal given the ones before), so a prefix of it is
    itself the best schedule of that length.
    """
    if not 1 <= steps <= len(POLAR_EXPRESS_COEFFS):
        raise ValueError(f"polar_express has {len(POLAR_EXPRESS_COEFFS)} steps, asked for {steps}")
    coeffs = list(POLAR_EXPRESS_COEFFS[:steps])
    return odd_quintic_iterations(G, coeffs, safety=POLAR_EXPRESS_SAFETY, dtype=dtype)


def orthogonalize(
    G: torch.Tensor, method: str, steps: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Dispatch on `method`: `polar_express` or `newton_schulz`."""
    if method == "polar_express":
        return polar_express(G, steps, dtype)
    if method == "newton_schulz":
        return newton_schulz(G, steps, dtype)
    raise ValueError(f"unknown orthogonalizer {method!r}; use polar_express or newton_schulz")
