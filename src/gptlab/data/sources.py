"""Where documents come from: text files, folders or globs, JSONL, Parquet and HF datasets.

A source is anything that yields documents (strings). Preparation and tokenizer training iterate
over documents one at a time, so a corpus never has to fit in memory. The kind of a file is read
from its extension: `.jsonl` / `.json` (one JSON object per line, or one JSON array of objects;
text under a field), `.parquet` (a column), anything else UTF-8 text. A text file is one
document, unless a `doc_separator` regex splits it. `hf:NAME` (or a folder written by
`datasets.save_to_disk`) reads a Hugging Face dataset: from the local cache, or from the Hub
when online.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from gptlab.errors import GptlabError

Kind = Literal["text", "jsonl", "parquet", "hf"]
HF_PREFIX = "hf:"
_SUFFIX_KIND: dict[str, Kind] = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class Source:
    """One input: a file (text/jsonl/parquet) or a Hugging Face dataset."""

    location: str  # a resolved file path, or a dataset name / folder for kind "hf"
    kind: Kind

    def fingerprint(self) -> str:
        """Identity of the source's current content: path, size and mtime (cheap, no reading)."""
        if self.kind == "hf" and not Path(self.location).exists():
            return f"hf|{self.location}"
        p = Path(self.location)
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        parts = [f"{f.resolve()}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReadOptions:
    """How to pull text out of sources (the matching DataConfig fields)."""

    text_field: str = "text"
    doc_separator: str = ""
    hf_split: str = "train"
    hf_config: str = ""


def _is_hf_disk_dataset(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
    )


def _kind_of(path: Path) -> Kind:
    return _SUFFIX_KIND.get(path.suffix.lower(), "text")


def resolve_sources(spec: str) -> list[Source]:
    """Sources for a path, folder (recursive), glob pattern or `hf:NAME`; sorted, so stable."""
    if spec.startswith(HF_PREFIX):
        name = spec[len(HF_PREFIX) :]
        if not name:
            raise GptlabError("hf: needs a dataset name, e.g. hf:roneneldan/TinyStories")
        return [Source(name, "hf")]
    path = Path(spec).expanduser()
    if _is_hf_disk_dataset(path):
        return [Source(str(path.resolve()), "hf")]
    if path.is_file():
        return [Source(str(path.resolve()), _kind_of(path))]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise GptlabError(f"folder {path} holds no files; put text, JSONL or Parquet in it")
        return [Source(str(p.resolve()), _kind_of(p)) for p in files]
    if glob.has_magic(spec):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise GptlabError(f"the pattern {spec!r} matches no files; check the path")
        return [Source(str(p.resolve()), _kind_of(p)) for p in files]
    raise GptlabError(
        f"dataset {spec!r} is neither a registered name nor an existing path; give a file, "
        "folder, glob pattern or hf:NAME"
    )


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GptlabError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"convert it, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed.txt"
        ) from None


def _text_docs(path: Path, separator: str) -> Iterator[str]:
    text = _read_utf8(path)
    if not separator:
        yield text
        return
    yield from (doc for doc in re.split(separator, text) if doc)


def _json_rows(path: Path) -> Iterator[tuple[int | str, Any]]:
    """(location, row) pairs: one per line (JSONL), or per element of a top-level JSON array."""
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith("["):  # a .json file holding one array of records
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise GptlabError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None
            yield from ((f"record {i}", row) for i, row in enumerate(rows, 1))
            return
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise GptlabError(f"{path}:{line_no} is not valid JSON ({e.msg})") from None


def _jsonl_docs(path: Path, field: str) -> Iterator[str]:
    for line_no, row in _json_rows(path):
        if not isinstance(row, dict) or field not in row:
            keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise GptlabError(
                f"{path}:{line_no} has no field {field!r} (it has: {keys}); "
                "choose the text field with --data.text_field"
            )
        value = row[field]
        if not isinstance(value, str):
            raise GptlabError(
                f"{path}:{line_no} field {field!r} is {type(value).__name__}, not text"
            )
        yield value


def _parquet_docs(path: Path, column: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GptlabError(
            f"reading {path.name} needs pyarrow; pip install 'gptlab[data]'"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a corrupt file
        raise GptlabError(f"{path} is not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise GptlabError(
            f"{path} has no column {column!r} (it has: {', '.join(names)}); "
            "choose the text column with --data.text_field"
        )
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value:
                yield value


def _hf_docs(location: str, opts: ReadOptions) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise GptlabError(
            "Hugging Face datasets need the datasets library; pip install 'gptlab[hf]'"
        ) from None
    try:
        if Path(location).exists():
            ds: Any = datasets.load_from_disk(location)
            if isinstance(ds, datasets.DatasetDict):
                if opts.hf_split not in ds:
                    raise GptlabError(
                        f"{location} has no split {opts.hf_split!r} (it has: {', '.join(ds)}); "
                        "choose one with --data.hf_split"
                    )
                ds = ds[opts.hf_split]
        else:
            ds = datasets.load_dataset(
                location, opts.hf_config or None, split=opts.hf_split, streaming=True
            )
    except GptlabError:
        raise
    except Exception as e:  # offline, unknown name, bad split: the library's own message
        raise GptlabError(f"cannot open Hugging Face dataset {location!r}: {e}") from None
    columns = ds.column_names
    if columns is not None and opts.text_field not in columns:
        raise GptlabError(
            f"dataset {location!r} has no column {opts.text_field!r} (it has: "
            f"{', '.join(columns)}); choose it with --data.text_field"
        )
    for row in ds:
        value = row[opts.text_field]
        if value:
            yield value


def iter_documents(sources: list[Source], opts: ReadOptions = ReadOptions()) -> Iterator[str]:
    """Every document of every source, in order."""
    for src in sources:
        if src.kind == "text":
            yield from _text_docs(Path(src.location), opts.doc_separator)
        elif src.kind == "jsonl":
            yield from _jsonl_docs(Path(src.location), opts.text_field)
        elif src.kind == "parquet":
            yield from _parquet_docs(Path(src.location), opts.text_field)
        else:
            yield from _hf_docs(src.location, opts)


def iter_texts(inputs: list[str], text_field: str = "text") -> Iterator[str]:
    """Documents from several input specs (files, folders, globs, hf:NAME), in order."""
    sources = [s for spec in inputs for s in resolve_sources(spec)]
    yield from iter_documents(sources, ReadOptions(text_field=text_field))
