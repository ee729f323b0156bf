"""Where a benchmark's data file is, and reading it with errors that name the file and line.

A task names the files it can read, relative to the data folder (GPTLAB_DATA_DIR, passed in by
the caller as `DataSources.data_dir`), in order of preference; an explicit path for the task
(`--data-path TASK=FILE`) or another data folder (`--data-path DIR`) comes first. When no file
is found the error says which file to put where.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gptlab.data.registry import sha256_file
from gptlab.errors import GptlabError


@dataclasses.dataclass(frozen=True)
class DataSources:
    """Data folders to look in (in order) and explicit per-task files or folders."""

    data_dirs: tuple[Path, ...] = ()
    paths: Mapping[str, Path] = dataclasses.field(default_factory=dict)


def find_file(task: str, candidates: tuple[str, ...], sources: DataSources, how: str) -> Path:
    """The first of `candidates` (paths under a data folder) that exists, or the task's explicit
    file; a folder given for the task is searched for the candidates' file names."""
    explicit = sources.paths.get(task)
    if explicit is not None:
        if explicit.is_file():
            return explicit
        if explicit.is_dir():
            for name in candidates:
                if (explicit / Path(name).name).is_file():
                    return explicit / Path(name).name
            names = " or ".join(Path(c).name for c in candidates)
            raise GptlabError(f"{task} data folder {explicit} holds no {names}; {how}")
        raise GptlabError(f"{task} data file {explicit} does not exist; check --data-path")
    for folder in sources.data_dirs:
        for name in candidates:
            if (folder / name).is_file():
                return folder / name
    where = ", ".join(str(d) for d in sources.data_dirs) or "unset"
    raise GptlabError(
        f"no {task} data: put {candidates[0]} under the data folder (GPTLAB_DATA_DIR, now "
        f"{where}) or pass --data-path {task}=FILE; {how}"
    )


def describe(path: Path) -> dict[str, str]:
    """The file a task read and its sha256, for the results' settings."""
    return {"data": str(path), "sha256": sha256_file(path)}


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path} is not UTF-8 text (offset {e.start}); convert it") from None
    except OSError as e:
        raise GptlabError(f"cannot read {path} ({e.strerror})") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file."""
    for line_no, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptlabError(f"{path}:{line_no} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise GptlabError(f"{path}:{line_no} is a JSON {type(row).__name__}, not an object")
        yield line_no, row


def field(row: dict[str, Any], name: str, kind: type, where: str) -> Any:
    """row[name], checked to be a `kind` (a list: of strings); `where` is 'file:line'."""
    if name not in row:
        raise GptlabError(f"{where} has no field {name!r} (it has: {', '.join(sorted(row))})")
    value = row[name]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if ok and kind is list:
        ok = bool(value) and all(isinstance(v, str) for v in value)
    if not ok:
        want = "a list of strings" if kind is list else kind.__name__
        raise GptlabError(f"{where} field {name!r} is {value!r:.60}, not {want}")
    return value
