"""Helpers shared by every config section: dict/JSON/YAML round trips with strict keys.

Each package owns a frozen dataclass (ModelConfig, DataConfig, ...). These helpers convert any of
them to plain dicts and back, rejecting unknown keys so a typo in a YAML file is an error, not a
silently ignored setting. No torch import here: configs are validated before anything heavy runs.

These are where configs are built from user input, so their mistakes are ConfigErrors: a
dataclass's `__post_init__` raises plain ValueError (the library contract), and from_dict turns
it into a ConfigError, which the CLI prints as one line with exit status 2. A ValueError from
anywhere else stays a bug with a traceback. ConfigError is itself a ValueError.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from gptlab.errors import ConfigError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-dict view of a config dataclass (JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON/YAML value to the declared field type, or raise ConfigError naming `where`."""
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{where}.")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}={value!r} does not match type {tp}")
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}={value!r} is not one of {choices}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build config `cls` from a (possibly partial) dict. Unknown keys, values of the wrong type
    and values its `__post_init__` rejects raise ConfigError."""
    types_ = _field_types(cls)
    names = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    unknown = [str(k) for k in data if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = (
            f"did you mean '{prefix}{close[0]}'?"
            if close
            else f"valid fields of {prefix.rstrip('.') or 'the config'} are: {', '.join(names)}"
        )
        raise ConfigError(f"unknown config field '{prefix}{unknown[0]}'; {hint}")
    kwargs = {k: _coerce(v, types_[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # __post_init__ validation, which names the field
        raise ConfigError(str(e)) from e


def merge(cfg: T, overrides: dict[str, Any], prefix: str = "") -> T:
    """Return `cfg` with a nested dict of overrides applied (sections merge, leaves replace);
    ConfigError as in from_dict."""
    base = to_dict(cfg)

    def deep(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            out[k] = deep(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out

    return from_dict(type(cfg), deep(base, overrides), prefix)


def _syntax_error(path: Path, e: Exception) -> ConfigError:
    """One line naming the file, the line and the problem of a YAML or JSON parse error."""
    if isinstance(e, json.JSONDecodeError):
        return ConfigError(f"config file {path}, line {e.lineno}, column {e.colno}: {e.msg}")
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or problem is None:  # e.g. a control character: no line to point at
        return ConfigError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}")
    where = f"config file {path}, line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        where += f" ({context} at line {context_mark.line + 1})"
    elif context:
        where += f" ({context})"
    return ConfigError(where)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict (YAML for .yaml/.yml, JSON otherwise).
    A missing, unreadable or malformed file, or one whose top level is not a mapping, raises
    ConfigError with one line that names the file (and the line, for a syntax error)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a YAML or JSON file")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte offset {e.start}); save it as UTF-8"
        ) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise _syntax_error(path, e) from None
        data = {} if data is None else data  # an empty file (or only comments) changes nothing
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _syntax_error(path, e) from None
    if not isinstance(data, dict):
        kinds = {"list": "list", "str": "string", "int": "number", "float": "number"}
        raise ConfigError(
            f"config file {path} must hold a mapping of sections (model:, train:, ...) at the "
            f"top level, not a {kinds.get(type(data).__name__, type(data).__name__)}"
        )
    return data


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n", encoding="utf-8")
