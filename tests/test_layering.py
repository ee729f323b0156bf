"""Imports point one way (STYLE.md section 2): read every module's imports with ast and check."""

import ast
import re
from pathlib import Path

import pytest

import gptlab

ROOT = Path(gptlab.__file__).parent

# package -> gptlab packages it may import (besides itself); leaf modules are shared by all
ALLOWED = {
    "cli": {"*"},
    "train": {"model", "data", "optim", "checkpoint", "infer", "runtime", "eval", "tokenizer"},
    "eval": {"model", "data", "checkpoint", "infer", "runtime", "tokenizer"},
    "presets": {"train", "model", "data", "optim", "infer"},
    "checkpoint": {"model", "tokenizer"},
    "data": {"tokenizer"},
    "optim": set(),
    "infer": {"model", "tokenizer", "checkpoint", "interop"},  # hf:DIR resolved in infer/load
    "interop": {"model", "tokenizer"},
    "serve": {"infer", "checkpoint", "tokenizer"},
    "ablate": {"train", "eval", "presets", "model"},  # model: FLOPs and parameter counts
    "scale": {"ablate", "train", "eval", "presets", "model"},  # scale -> ablate: sweeps run there
    "model": set(),
    "tokenizer": set(),
    "runtime": set(),
    "config": set(),
    "errors": set(),
    "seeding": set(),
    "__main__": {"cli"},
}
LEAVES = {"config", "errors", "seeding", "__init__"}


def _top(module: str) -> str:
    """The gptlab package or top-level module a dotted name points into; a name that is not a
    module of gptlab (`gptlab.__version__`) comes from gptlab/__init__.py."""
    part = module.split(".")[1] if module.count(".") else "__init__"
    return part if (ROOT / part).is_dir() or (ROOT / f"{part}.py").is_file() else "__init__"


def _imported(node: ast.AST, rel: Path) -> list[str]:
    """Absolute dotted names an import statement in file `rel` reaches: `import gptlab.x`,
    `from gptlab.x import y` and `from gptlab import x` (gptlab.x.y, gptlab.x), and relative
    imports resolved against the file's package."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # from . import x, from ..y import z
        package = ["gptlab", *rel.parts[:-1]]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [f"{base}.{a.name}" for a in node.names]


def _violations(rel: Path, source: str) -> list[str]:
    pkg = rel.parts[0].removesuffix(".py")
    bad = []
    for node in ast.walk(ast.parse(source)):
        for name in _imported(node, rel):
            if not name.startswith("gptlab."):
                continue
            target = _top(name)
            allowed = ALLOWED[pkg]
            if target in (pkg, *LEAVES) or "*" in allowed or target in allowed:
                continue
            bad.append(f"{rel} imports {name}")
    return bad


def test_imports_point_one_way():
    bad = [
        v
        for path in ROOT.rglob("*.py")
        for v in _violations(path.relative_to(ROOT), path.read_text())
    ]
    assert not bad, bad


@pytest.mark.parametrize(
    "source",
    [
        "import gptlab.train.loop",
        "from gptlab.train.loop import train",
        "from gptlab.train import loop",
        "from gptlab import train",
        "from gptlab import config, train",
        "from .. import train",
        "from ..train.loop import train",
    ],
)
def test_every_import_form_is_checked(source):
    """model may not import train, however the import is written."""
    assert len(_violations(Path("model/gpt.py"), source)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "from gptlab import config",
        "from gptlab import __version__",
        "from gptlab.model import layers",
        "from . import layers",
        "from .layers import make_norm",
        "import gptlab",
    ],
)
def test_allowed_imports_pass(source):
    assert _violations(Path("model/gpt.py"), source) == []


def test_config_modules_do_not_import_torch():
    for path in [ROOT / "config.py", *ROOT.rglob("*/config.py")]:
        tree = ast.parse(path.read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m == "torch" or m.startswith("torch.") for m in mods), path


def test_only_cli_prints_or_reads_env():
    for path in ROOT.rglob("*.py"):
        if path.relative_to(ROOT).parts[0] == "cli":
            continue
        src = path.read_text()
        assert not re.search(r"(?<![\w.])print\(", src), path
        assert "os.environ" not in src and "sys.argv" not in src, path
