"""The ablation spec: a base config, named variants (explicit, or a product of axes), seeds, a
budget per run, the metric to compare and the baseline, read from YAML (or a dict).

    name: positions-x-optimizer
    base: {preset: shakespeare_char_cpu, overrides: {train.eval_interval: 60}}
    axes: {model.pos_emb: [learned, rope], optim.name: [adamw, muon]}   # 4 variants
    variants: {qknorm: {model.qk_norm: true}}                           # and one more
    seeds: [1, 2, 3]
    budget: {wall_seconds: 60}       # or steps / tokens / flops
    metric: val_bpb                  # or val_loss, eval/TASK/METRIC, time_to:val_loss<=1.9
    baseline: learned-adamw

Overrides use the CLI's dotted names (--model.pos_emb -> model.pos_emb). Axis variants are
named by their values joined with '-', in the order the axes are listed. Everything is checked
here, before anything runs: each mistake is one ConfigError naming the variant and the field.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from pathlib import Path
from typing import Any

from gptlab.ablate.runner import PlannedRun, parse_time_to, run_dir_for
from gptlab.config import load_file, merge
from gptlab.errors import ConfigError
from gptlab.presets import get_preset
from gptlab.train.config import RunConfig

SPEC_FILE = "spec.json"  # the spec an output folder holds results of
FIELDS = ("name", "description", "base", "axes", "variants", "seeds", "budget", "metric",
          "baseline")  # fmt: skip
BUDGETS = ("steps", "tokens", "flops", "wall_seconds")
STEP_CAP = 1_000_000  # max_steps of a wall-time budget: time is the budget, not steps
PLAIN_METRICS = ("val_bpb", "val_loss", "train_eval_loss")  # logged at every evaluation
# benchmark metrics training logs as eval/TASK/METRIC (gptlab.eval.tasks)
TASK_METRICS = {
    "hellaswag": ("acc", "acc_norm"),
    "arc_easy": ("acc", "acc_norm"),
    "piqa": ("acc", "acc_norm"),
    "lambada": ("acc", "ppl"),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Variant:
    name: str
    overrides: dict[str, Any]  # dotted name -> value, as written in the spec
    config: RunConfig  # base + overrides + budget (seed and out_dir set per run)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AblationSpec:
    name: str
    description: str
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    budget: tuple[str, float] | None  # (kind, amount); None: the base config's max_steps
    metric: str
    baseline: str
    raw: dict[str, Any]  # the spec as read: what an output folder records

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def higher_is_better(metric: str) -> bool:
    """Accuracies and scores go up; losses, bits per byte, perplexity and times go down."""
    if metric.startswith("time_to:"):
        return False
    leaf = metric.rsplit("/", 1)[-1]
    return metric.startswith("eval/") and (leaf.startswith("acc") or leaf == "score")


def _nest(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """{'model.n_layer': 4} -> {'model': {'n_layer': 4}} (nested mappings are accepted too)."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        if len(parts) < 2 and not isinstance(value, dict):
            raise ConfigError(
                f"{where}: override {key!r} is not a dotted field name such as model.n_layer "
                "(the names of gptlab train's flags, without --)"
            )
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key!r} is set twice")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] |= value
        else:
            node[parts[-1]] = value
    return nested


def _apply(cfg: RunConfig, overrides: dict[str, Any], where: str) -> RunConfig:
    try:
        return merge(cfg, _nest(overrides, where))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _value_name(key: str, value: Any) -> str:
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        return leaf if value else f"no_{leaf}"
    if isinstance(value, float):
        return f"{leaf}={value:g}"
    if isinstance(value, int):
        return f"{leaf}={value}"
    return str(value)


def expand_axes(axes: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Axes -> [(name, overrides)]: the product of the values, first axis slowest; names are the
    values joined with '-' (numbers and booleans carry their field name: n_layer=4, no_qk_norm)."""
    for key, values in axes.items():
        if not isinstance(values, list):
            raise ConfigError(f"axes.{key} must be a list of values, got {values!r}")
        if not values:
            raise ConfigError(f"axes.{key} is empty; give at least one value (two to compare)")
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(f"axes.{key} lists a value twice: {values}")
    out = []
    for combo in itertools.product(*axes.values()):
        overrides = dict(zip(axes, combo, strict=True))
        name = "-".join(_value_name(k, v) for k, v in overrides.items())
        out.append((name, overrides))
    return out


def tokens_per_step(cfg: RunConfig) -> int:
    """Training tokens in one optimizer step on one process (the first stage's shape)."""
    B, T, accum = cfg.train.shape_at(0, cfg.model.seq_len, 1)
    return B * T * accum


def train_flops_per_step(cfg: RunConfig) -> int:
    from gptlab.model.accounting import flops_per_token  # torch: only for a flops budget

    return flops_per_token(cfg.model) * tokens_per_step(cfg)


def apply_budget(cfg: RunConfig, budget: tuple[str, float] | None, where: str) -> RunConfig:
    """Set max_steps (and max_seconds) so a run spends the budget: steps as given, tokens and
    FLOPs converted with the variant's own tokens per step and FLOPs per token, wall seconds as
    train.max_seconds with a step cap high enough never to bind first."""
    if budget is None:
        return cfg
    kind, amount = budget
    tc = cfg.train
    if kind == "wall_seconds":
        tc = dataclasses.replace(tc, max_seconds=float(amount), max_steps=STEP_CAP)
    else:
        per_step = {"steps": 1, "tokens": tokens_per_step, "flops": train_flops_per_step}[kind]
        per = per_step if isinstance(per_step, int) else per_step(cfg)
        tc = dataclasses.replace(tc, max_steps=max(1, math.ceil(amount / per)), max_seconds=0.0)
    try:
        return dataclasses.replace(cfg, train=tc)
    except ValueError as e:  # e.g. warmup longer than the steps the budget buys
        raise ConfigError(f"{where}: budget.{kind} {amount:g}: {e}") from None


def _budget(raw: Any) -> tuple[str, float] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(
            f"budget must be one of {', '.join(BUDGETS)} with an amount, e.g. "
            f"{{wall_seconds: 60}}, got {raw!r}"
        )
    ((kind, amount),) = raw.items()
    if kind not in BUDGETS:
        raise ConfigError(f"unknown budget {kind!r}; choose one of {', '.join(BUDGETS)}")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        try:
            amount = float(amount)  # YAML reads 1e15 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"budget.{kind} must be a number, got {amount!r}") from None
    if not amount > 0 or math.isinf(amount):
        raise ConfigError(f"budget.{kind} must be a positive number, got {amount!r}")
    if kind == "steps" and amount != int(amount):
        raise ConfigError(f"budget.steps must be a whole number, got {amount}")
    return kind, float(amount)


def check_metric(metric: str, variant: Variant) -> None:
    """ConfigError unless the variant's training logs `metric` at its evaluations."""
    target = parse_time_to(metric)
    key = target[0] if target else metric
    where = f"variant {variant.name}: metric {metric!r}"
    if key in PLAIN_METRICS:
        return
    if not key.startswith("eval/"):
        raise ConfigError(
            f"{where}: training logs no {key!r}; choose val_bpb, val_loss, train_eval_loss, "
            "eval/TASK/METRIC or time_to:METRIC<=X"
        )
    parts = key.split("/")
    tasks = [t.strip() for t in variant.config.train.eval_tasks.split(",") if t.strip()]
    if "all" in tasks:
        tasks = [*TASK_METRICS, "val"]
    if key == "eval/score" and tasks:
        return
    task = parts[1] if len(parts) > 1 else "TASK"
    if len(parts) < 3 or task not in tasks:
        raise ConfigError(
            f"{where}: training logs eval/TASK/METRIC only for the tasks in train.eval_tasks "
            f"({','.join(tasks) or 'none'}); add train.eval_tasks: {task} to base.overrides"
        )
    known = TASK_METRICS.get(task)
    if known is not None and parts[2] not in known:
        raise ConfigError(f"{where}: {task} logs {', '.join(known)}, not {parts[2]!r}")


def parse_spec(raw: dict[str, Any], source: str = "spec") -> AblationSpec:
    """Validate a spec dict and resolve every variant's config; ConfigError on any mistake."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping of fields ({', '.join(FIELDS)})")
    unknown = [k for k in raw if k not in FIELDS]
    if unknown:
        raise ConfigError(
            f"{source}: unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{source}: name must be a short identifier (letters, digits, -_.), got {name!r}"
        )
    base_raw = raw.get("base", {})
    if not isinstance(base_raw, dict) or set(base_raw) - {"preset", "overrides"}:
        raise ConfigError(
            f"{source}: base must be {{preset: NAME, overrides: {{field: value}}}}, "
            f"got {base_raw!r}"
        )
    base = get_preset(str(base_raw.get("preset", "shakespeare_char_cpu")))
    base_over = base_raw.get("overrides") or {}
    if not isinstance(base_over, dict):
        raise ConfigError(f"{source}: base.overrides must be a mapping of field: value")
    base = _apply(base, base_over, "base.overrides")

    named: list[tuple[str, dict[str, Any]]] = []
    axes = raw.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(
            f"{source}: axes must map a field to its values, e.g. {{optim.name: [adamw, muon]}}"
        )
    if axes:
        named += expand_axes(axes)
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict):
        raise ConfigError(f"{source}: variants must map a name to its overrides")
    for vname, over in variants.items():
        if over is None:
            over = {}  # a variant with no overrides: the base itself
        if not isinstance(over, dict):
            raise ConfigError(f"variant {vname}: its overrides must be a mapping of field: value")
        named.append((str(vname), over))
    if not named:
        raise ConfigError(f"{source}: no variants; give axes, variants or both")
    seen: set[str] = set()
    for vname, _ in named:
        if not _NAME.match(vname):
            raise ConfigError(
                f"variant {vname!r}: a name must be letters, digits and -_.=+ (it names a folder)"
            )
        if vname in seen:
            raise ConfigError(
                f"variant {vname}: the name is used twice; variant names must be unique"
            )
        seen.add(vname)

    seeds = raw.get("seeds", [1])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(
            f"{source}: seeds must be a non-empty list of integers >= 0, got {seeds!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{source}: seeds lists a seed twice: {seeds}")
    budget = _budget(raw.get("budget"))
    metric = raw.get("metric", "val_bpb")
    if not isinstance(metric, str):
        raise ConfigError(f"{source}: metric must be a name such as val_bpb, got {metric!r}")

    resolved = []
    for vname, over in named:
        cfg = apply_budget(_apply(base, over, f"variant {vname}"), budget, f"variant {vname}")
        resolved.append(Variant(name=vname, overrides=dict(over), config=cfg))
    for v in resolved:
        check_metric(metric, v)
    baseline = raw.get("baseline", resolved[0].name)
    if baseline not in seen:
        raise ConfigError(
            f"{source}: baseline {baseline!r} is not a variant; choose one of "
            + ", ".join(n for n, _ in named)
        )
    return AblationSpec(
        name=name,
        description=str(raw.get("description", "")),
        variants=tuple(resolved),
        seeds=tuple(seeds),
        budget=budget,
        metric=metric,
        baseline=baseline,
        raw=raw,
    )


def load_spec(spec: Any) -> AblationSpec:
    """An AblationSpec from itself, a dict, or a YAML/JSON file path."""
    if isinstance(spec, AblationSpec):
        return spec
    if isinstance(spec, dict):
        return parse_spec(spec)
    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"ablation spec {path} must be a .yaml, .yml or .json file")
    return parse_spec(load_file(path), source=f"spec {path}")


def plan(spec: AblationSpec, out: Path) -> list[PlannedRun]:
    """Every (variant, seed) of the spec, seed-major within each variant, with its run dir."""
    runs = []
    for v in spec.variants:
        for seed in spec.seeds:
            run_dir = run_dir_for(out, v.name, seed)
            tc = dataclasses.replace(v.config.train, seed=seed, out_dir=str(run_dir))
            cfg = dataclasses.replace(v.config, train=tc)
            runs.append(PlannedRun(variant=v.name, seed=seed, config=cfg, run_dir=run_dir))
    return runs


def estimate(p: PlannedRun, flops_per_s: float | None) -> dict[str, Any]:
    """The --dry-run numbers of a run: steps, tokens, training FLOPs and seconds. A step budget
    gives the FLOPs exactly and the time as FLOPs / flops_per_s; a wall-time budget the time
    exactly and the rest as what flops_per_s would do in it (None without flops_per_s)."""
    cfg = p.config
    per_step = train_flops_per_step(cfg)
    if cfg.train.max_seconds:
        seconds = cfg.train.max_seconds
        steps = round(seconds * flops_per_s / per_step) if flops_per_s else None
    else:
        steps = cfg.train.max_steps
        seconds = per_step * steps / flops_per_s if flops_per_s else None
    return {
        "steps": steps,
        "tokens": tokens_per_step(cfg) * steps if steps is not None else None,
        "flops": per_step * steps if steps is not None else None,
        "seconds": seconds,
    }
