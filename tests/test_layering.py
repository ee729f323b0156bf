"""Imports point one way (STYLE.md section 2): read every module's imports with ast and check."""

import ast
import re
from pathlib import Path

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
    "infer": {"model", "tokenizer", "checkpoint"},
    "serve": {"infer", "checkpoint", "tokenizer"},
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
    return module.split(".")[1] if module.count(".") else "__init__"


def test_imports_point_one_way():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        pkg = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if not name.startswith("gptlab."):
                    continue
                target = _top(name)
                allowed = ALLOWED[pkg]
                if target in (pkg, *LEAVES) or "*" in allowed or target in allowed:
                    continue
                bad.append(f"{rel} imports {name}")
    assert not bad, bad


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
