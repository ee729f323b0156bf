"""Building an optimizer (and stepping Muon) does not import torch's compiler (about a second of
startup); once the compiler is loaded, the methods torch marks "never trace" are still kept
out of compiled code. Each case runs in a fresh interpreter, since this process has long
imported torch._dynamo."""

import subprocess
import sys
import textwrap

import pytest


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_an_eager_optimizer_never_imports_the_compiler(name):
    """Building either never imports it. Stepping: our Muon never does; torch's AdamW.step
    imports it on its first call (torch's `_use_grad_for_differentiable`), which we leave be."""
    out = _python(
        f"""
        import sys
        import torch
        from gptlab.optim.build import build_optimizer
        from gptlab.optim.config import OptimConfig

        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
        opt = build_optimizer(model.named_parameters(), OptimConfig(name="{name}"))
        built = "torch._dynamo" in sys.modules
        for _ in range(2):
            model(torch.randn(4, 8)).sum().backward()
            opt.step()
            opt.zero_grad()
        opt.load_state_dict(opt.state_dict())
        print(built, "torch._dynamo" in sys.modules, len(opt.state))
        """
    )
    stepped = "True" if name == "adamw" else "False"
    assert out == f"False {stepped} 4"  # and every parameter has its optimizer state


def test_once_the_compiler_is_loaded_marked_methods_stay_out_of_compiled_code():
    out = _python(
        """
        import torch
        from gptlab.optim.build import build_optimizer
        from gptlab.optim.config import OptimConfig
        from gptlab.optim.lazy_compiler import defer_compiler_import

        lin = torch.nn.Linear(4, 4)
        opt = build_optimizer(lin.named_parameters(), OptimConfig())
        installed = defer_compiler_import()

        import torch._dynamo
        from torch._dynamo.testing import CompileCounter

        counter = CompileCounter()

        @torch.compile(backend=counter)
        def f(x):
            y = x * 2
            opt.zero_grad()  # "never trace": a graph break, then compiled code again
            return y + 1

        lin(torch.randn(2, 4)).sum().backward()
        out = f(torch.ones(3))
        print(installed, out.tolist(), counter.frame_count, lin.weight.grad is None)
        """
    )
    installed, rest = out.split(" ", 1)
    assert int(installed) == 4  # add_param_group, zero_grad, state_dict, load_state_dict
    assert rest == "[3.0, 3.0, 3.0] 2 True"  # two graphs around the break; grads were cleared
