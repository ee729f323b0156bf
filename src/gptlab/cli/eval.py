"""`gptlab eval TARGET`: benchmarks, validation loss and perplexity of a trained model.

TARGET is a run directory (its best/ or latest/ checkpoint), a checkpoint directory, or
hf:DIR, a Hugging Face model folder. The tasks (eval/tasks/) run on one scorer
(eval/scorer.py); the model runs in eval mode under the run's compute dtype (autocast over
fp32 weights, as training evaluates). A table is printed and a JSON file written: the model's
identity, every task's metrics with standard errors, sample sizes and chance levels, the
aggregate score, and the exact settings. `--harness` also runs lm-evaluation-harness tasks on
the same model (eval/harness.py) and puts their results in the same file. `--chat` asks the
multiple-choice tasks as lettered questions in the run's chat template instead
(eval/tasks/chat_choice.py), reported as `<task>_chat` with their own `chat_score`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from gptlab import checkpoint
from gptlab.cli.common import UsageError, locations, parse, setup_logging
from gptlab.config import from_dict
from gptlab.errors import GptlabError
from gptlab.eval.api import EvalReport, run_tasks
from gptlab.eval.tasks import ALL, BENCHMARKS, CHOICE, parse_tasks
from gptlab.eval.tasks.val import open_val_split
from gptlab.infer.load import Loaded, load_for_inference
from gptlab.interop import hf as interop
from gptlab.model.accounting import count_params
from gptlab.model.config import ModelConfig
from gptlab.runtime import DTYPES, keep_freed_host_memory, pick_compute_dtype, pick_device
from gptlab.tokenizer.chat import ChatTemplate, chat_template, recorded_template

log = logging.getLogger(__name__)
HF_PREFIX = "hf:"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalArgs:
    """Evaluate a trained model on benchmarks, its validation split or any text."""

    target: Annotated[str, tyro.conf.Positional]
    """A run directory, a checkpoint directory, or hf:DIR (a Hugging Face model folder)."""
    tasks: str | None = None
    """Comma-separated: hellaswag, lambada, arc_easy, piqa, val (the run's validation split),
    ppl:PATH (any text, folder or JSONL), or all (the four benchmarks and val; the default,
    unless --harness is given)."""
    limit: int | None = None
    """At most this many examples per task, a fixed seeded subset (windows for val, documents
    for ppl); all of them when unset."""
    batch_size: int = 32
    """Continuations (or windows) scored per forward pass."""
    device: str = "auto"
    """'auto', cpu, cuda, cuda:N or mps."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype (autocast over fp32 weights); auto = the run's own compute dtype."""
    num_fewshot: int = 0
    """Solved examples written before each one (0: zero-shot, the reference numbers')."""
    out: str = "eval_results.json"
    """Where to write the JSON results."""
    data_path: tuple[str, ...] = ()
    """Task data: TASK=FILE (or TASK=FOLDER) for one task, or a folder laid out like
    GPTLAB_DATA_DIR (searched before it)."""
    checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of a run directory to evaluate."""
    seed: int = 0
    """Seed of the --limit subsets and the few-shot draws."""
    stride: int | None = None
    """ppl:PATH windows advance by this many tokens (default: the context length)."""
    harness: str | None = None
    """lm-evaluation-harness tasks to run too (comma-separated; needs gptlab[eval])."""
    harness_include: tuple[str, ...] = ()
    """Folders of harness task YAML files (tasks over local data)."""
    chat: bool = False
    """Chat mode: ask the multiple-choice tasks (hellaswag, arc_easy, piqa; the default tasks
    then) as lettered questions in the run's recorded chat template and compare the letters'
    logits; reported as TASK_chat. A base model needs --chat-template."""
    chat_template: Literal["special_tokens", "plain"] | None = None
    """The chat template for --chat (implies it): forces one on a base model or replaces the
    one a chat-tuned run recorded."""


@dataclasses.dataclass
class Target:
    loaded: Loaded
    identity: dict[str, Any]
    add_bos: bool | None  # None: the tokenizer decides (gptlab runs)


def _check_args(args: EvalArgs) -> list[str]:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be a positive number of examples, got {args.limit}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.stride is not None and args.stride < 1:
        raise UsageError(f"--stride must be >= 1, got {args.stride}")
    chat = args.chat or args.chat_template is not None
    if args.tasks is None:
        return [] if args.harness else list(CHOICE if chat else ALL)
    return parse_tasks(args.tasks, chat=chat)


def _chat_template(args: EvalArgs, target: Target) -> ChatTemplate | None:
    """The template of --chat: the forced one, else the one the run recorded; None without
    --chat. A base model without --chat-template is a UsageError."""
    loaded = target.loaded
    if args.chat_template is not None:
        try:
            return chat_template(loaded.tokenizer, args.chat_template)
        except ValueError as e:  # special_tokens on a tokenizer without the reserved tokens
            raise UsageError(f"--chat-template {args.chat_template}: {e}") from None
    if not args.chat:
        return None
    template = recorded_template(loaded.config, loaded.tokenizer)
    if template is None:
        raise UsageError(
            f"--chat: {args.target} is a base model (it was not chat-finetuned, so it recorded "
            "no chat template); pass --chat-template plain|special_tokens to force one"
        )
    return template


def _data_paths(entries: tuple[str, ...]) -> tuple[list[Path], dict[str, Path]]:
    """--data-path values: (folders, {task: path})."""
    folders, per_task = [], {}
    for entry in entries:
        task, sep, path = entry.partition("=")
        if not sep:
            folders.append(Path(entry).expanduser())
            continue
        if task not in BENCHMARKS:
            raise UsageError(
                f"--data-path {entry}: {task!r} is not a benchmark with data files; use one of "
                f"{', '.join(BENCHMARKS)}"
            )
        per_task[task] = Path(path).expanduser()
    return folders, per_task


def load_target(spec: str, which: str, device: torch.device) -> Target:
    """The model (fp32 weights, eval mode, on device) and tokenizer of TARGET, and its identity."""
    if spec.startswith(HF_PREFIX):  # converted on the fly by infer/load.py
        loaded = load_for_inference(Path(spec), which, device, "float32")
        identity = {
            "target": spec,
            "run_dir": None,
            "checkpoint": str(loaded.path),
            "step": None,
            "params": count_params(loaded.model).total,
            "config_hash": hashlib.sha256(
                json.dumps(loaded.config, sort_keys=True).encode()
            ).hexdigest()[:16],
            "tokenizer": loaded.tokenizer.describe(),
            "tokenizer_fingerprint": loaded.tokenizer.fingerprint(),
        }
        model_cfg = from_dict(ModelConfig, loaded.config["model"])
        return Target(loaded, identity, interop.scores_with_bos(model_cfg, loaded.tokenizer))
    path = Path(spec)
    if not path.exists():
        raise GptlabError(
            f"{spec} does not exist; give a run directory, a checkpoint directory or hf:DIR"
        )
    is_ckpt = (path / checkpoint.CONFIG).is_file() and (path / checkpoint.WEIGHTS).is_file()
    if not is_ckpt and not checkpoint.resolve(path / which).is_dir():
        hf = _hf_config(path)
        hint = f"; it looks like a Hugging Face model, pass hf:{spec}" if hf else ""
        raise GptlabError(
            f"{spec} is not a run directory (no {which}/ checkpoint), a checkpoint directory "
            f"({checkpoint.CONFIG} + {checkpoint.WEIGHTS}) or an hf:DIR model{hint}"
        )
    if is_ckpt and _hf_config(path):
        raise GptlabError(f"{spec} is a Hugging Face model folder; pass it as hf:{spec}")
    loaded = load_for_inference(path, which, device, "float32")
    config = loaded.config
    state = loaded.path / checkpoint.STATE
    step = (
        checkpoint.load_pt(loaded.path, checkpoint.STATE).get("step") if state.is_file() else None
    )
    run_dir = loaded.path.parent if loaded.path != path else None
    identity = {
        "target": spec,
        "run_dir": str(run_dir) if run_dir is not None else None,
        "checkpoint": str(loaded.path),
        "step": step,
        "params": count_params(loaded.model).total,
        "config_hash": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16],
        "tokenizer": loaded.tokenizer.describe(),
        "tokenizer_fingerprint": loaded.tokenizer.fingerprint(),
    }
    return Target(loaded, identity, _imported_bos(run_dir or loaded.path.parent))


def _imported_bos(run_dir: Path) -> bool | None:
    """The BOS rule of an HF model that `gptlab import` made into this run (the same as its
    hf:DIR gets), or None for a run gptlab trained (its tokenizer decides)."""
    try:
        doc = json.loads((run_dir / interop.IMPORTED).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    value = doc.get("scores_with_bos") if isinstance(doc, dict) else None
    return value if isinstance(value, bool) else None


def _hf_config(path: Path) -> bool:
    try:
        doc = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and "model_type" in doc


def _compute_dtype(args: EvalArgs, target: Target, device: torch.device) -> torch.dtype:
    if args.dtype != "auto":
        return DTYPES[args.dtype]
    stored = target.loaded.config.get("train", {}).get("dtype", "auto")
    try:
        return pick_compute_dtype(stored, device)
    except ValueError:  # e.g. a bf16 run evaluated on a GPU without bf16
        return pick_compute_dtype("auto", device)


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def format_table(report: EvalReport) -> str:
    """task / metric / value / stderr / n / chance, one line per metric, then the score."""
    lines = [f"{'task':<14} {'metric':<16} {'value':>10} {'stderr':>9} {'n':>7} {'chance':>7}"]
    for r in report.results:
        chance = f"{r.chance:.4f}" if r.chance is not None else "-"
        for metric, value in r.metrics.items():
            if metric.endswith("_stderr"):
                continue
            stderr = r.metrics.get(f"{metric}_stderr", float("nan"))
            shown_chance = chance if metric.startswith("acc") else "-"
            lines.append(
                f"{r.name:<14.14} {metric:<16} {value:>10.4f} {stderr:>9.4f} {r.n:>7} "
                f"{shown_chance:>7}"
            )
    for name, score in (("score", report.score), ("chat_score", report.chat_score)):
        if score is not None:
            lines.append(
                f"{name:<14} {'centered acc':<16} {score[0]:>10.4f} {score[1]:>9.4f} {'-':>7} "
                f"{0.0:>7.4f}"
            )
    return "\n".join(lines)


def _notes(report: EvalReport, seq_len: int) -> list[str]:
    notes = []
    for r in report.results:
        if r.cropped:
            notes.append(
                f"{r.name}: {r.cropped} of {r.n} examples were longer than the {seq_len}-token "
                "context and were cropped from the left"
            )
        if r.skipped:
            notes.append(
                f"{r.name}: {r.skipped} examples were skipped: the model's tokenizer cannot "
                "encode them (characters outside its vocabulary)"
            )
    return notes


def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise GptlabError(
            "--harness needs lm-evaluation-harness, which is not installed: "
            "pip install 'gptlab[eval]'"
        ) from None


def _harness(args: EvalArgs, target: Target, autocast) -> dict[str, Any]:
    from gptlab.eval.harness import GptlabLM, run_harness

    lm = GptlabLM(
        model=target.loaded.model,
        tokenizer=target.loaded.tokenizer,
        batch_size=args.batch_size,
        add_bos=target.add_bos,
        autocast=autocast,
    )
    names = [t.strip() for t in args.harness.split(",") if t.strip()]
    includes = [Path(p) for p in args.harness_include]
    try:
        results = run_harness(
            lm, names, num_fewshot=args.num_fewshot, limit=args.limit, include_paths=includes
        )
    except KeyError as e:  # the harness's own error for a task name it does not know
        raise GptlabError(f"lm-evaluation-harness does not know task {e}") from None
    keep = ("results", "groups", "n-shot", "versions", "higher_is_better", "n-samples")
    return {k: results[k] for k in keep if k in results}


def _plain(value: Any) -> Any:
    """JSON-ready: NaN (a stderr of one example) becomes null; other odd values, strings."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def run(argv: list[str]) -> int:
    args = parse(EvalArgs, argv, prog="gptlab eval")
    setup_logging()
    names = _check_args(args)
    folders, per_task = _data_paths(args.data_path)
    if args.harness:
        _require_lm_eval()  # before loading anything
    device = pick_device(args.device)
    if device.type == "cpu":
        keep_freed_host_memory()  # reuse freed logits buffers instead of faulting in new pages
    target = load_target(args.target, args.checkpoint, device)
    model, tokenizer = target.loaded.model, target.loaded.tokenizer
    template = _chat_template(args, target)
    dtype = _compute_dtype(args, target, device)
    autocast = _autocast(device, dtype)
    loc = locations()
    report = EvalReport([], {})
    if names:
        val = open_val_split(target.loaded.config, loc, tokenizer) if "val" in names else None
        report = run_tasks(
            model,
            tokenizer,
            names,
            limit=args.limit,
            num_fewshot=args.num_fewshot,
            batch_size=args.batch_size,
            autocast=autocast,
            data_dirs=[*folders, *([loc.data_dir] if loc.data_dir else [])],
            data_paths=per_task,
            val_split=val,
            seed=args.seed,
            add_bos=target.add_bos,
            stride=args.stride,
            chat_template=template,
        )
        print(format_table(report))
        for note in _notes(report, model.cfg.seq_len):
            print(f"note: {note}")
    identity = {**target.identity, "device": str(device), "dtype": str(dtype)[len("torch.") :]}
    doc = report.to_json(identity)
    if args.harness:
        doc["harness"] = _harness(args, target, autocast)
        for task, metrics in doc["harness"].get("results", {}).items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            print(f"harness {task}: {shown}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_plain(doc), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0
