"""Keep torch's compiler unimported until something compiles.

torch marks a few `Optimizer` methods (`add_param_group`, `zero_grad`, `state_dict`,
`load_state_dict`) "never trace me" with `torch._disable_dynamo`, which imports `torch._dynamo`
on the method's first call: about a second on a small CPU, paid by every eager run the moment it
builds an optimizer. Until `torch._dynamo` is imported nothing can be compiling, so the mark has
nothing to do. `defer_compiler_import()` gives each marked method a first-call cache entry that
runs the method as it is while the compiler is absent and, once it is loaded, builds and uses the
same `torch._dynamo.disable` wrapper torch would have. If a torch version changes how the mark
is cached, the entry is ignored and torch behaves as before (slower to start, never wrong).
Stepping torch's AdamW still imports the compiler (its `step` wrapper does so unconditionally);
our MuonAdamW's step does not, so the default CPU run never loads it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch

_MARK_FILE = "_compile.py"  # torch/_compile.py holds _disable_dynamo's wrapper
_CACHE = "__dynamo_disable"  # the attribute that wrapper caches its disabled function in


def _lazily_disabled(fn: Callable[..., Any]) -> Callable[..., Any]:
    disabled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:  # no compiler loaded: nothing is tracing this
            return fn(*args, **kwargs)
        if not disabled:
            import torch._dynamo

            disabled.append(torch._dynamo.disable(fn, recursive=True))
        return disabled[0](*args, **kwargs)

    return call


@functools.cache
def defer_compiler_import() -> int:
    """Install the lazy entries on torch.optim.Optimizer (once); returns how many."""
    count = 0
    for attr in vars(torch.optim.Optimizer).values():
        code = getattr(attr, "__code__", None)
        inner = getattr(attr, "__wrapped__", None)
        if code is None or inner is None or not code.co_filename.endswith(_MARK_FILE):
            continue
        if getattr(inner, _CACHE, None) is None:
            setattr(inner, _CACHE, _lazily_disabled(inner))
            count += 1
    return count
