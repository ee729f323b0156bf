"""Scaling: one size dial -> a full config (auto.py), sweeps over it (sweep.py), and the
Chinchilla fit L(N, D) = E + A/N^alpha + B/D^beta with its compute-optimal frontier (fit.py).

`gptlab.scale.fit(results)` is the fitting function (it shadows the submodule of the same
name as an attribute; import helpers with `from gptlab.scale.fit import Law`).
"""

from gptlab.scale.fit import fit

__all__ = ["fit"]
