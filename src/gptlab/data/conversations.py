"""Reading conversation files for chat finetuning: JSON / JSONL (or hf:NAME) rows in the
OpenAI `messages`, ShareGPT `conversations`, instruction/input/output or self-instruct
`instances` schema -> lists of Messages (data/chat.py tokenizes and batches them).

The schema is detected row by row, so files may mix them. A conversation with no assistant
turn is skipped and counted; a row in no schema, an unknown role or non-text content is one
error line naming the file and the line (JSONL) or row (JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.tokenizer.chat import Message

# role names seen in the wild -> ours (ShareGPT's from, OpenAI's role, Gemini's "model")
ROLE_NAMES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
}
SCHEMAS = (
    "messages (role/content), conversations (from/value), instruction/output (+ input), "
    "instruction/instances"
)


# -- reading ------------------------------------------------------------------------------


def read_conversations(
    paths: Sequence[str], *, allow_download: bool = False, limit: int = 0
) -> tuple[list[list[Message]], dict[str, int]]:
    """The conversations of JSON/JSONL files (or hf:NAME[:SPLIT]), the schema detected per
    row, up to `limit` (0: all); stats count rows, conversations and those skipped for having
    no assistant turn."""
    conversations: list[list[Message]] = []
    stats = {"rows": 0, "conversations": 0, "skipped_no_assistant": 0}
    for path in paths:
        for where, row in _rows(path, allow_download):
            stats["rows"] += 1
            for messages in _row_conversations(row, where):
                if not any(m.role == "assistant" for m in messages):
                    stats["skipped_no_assistant"] += 1
                    continue
                conversations.append(messages)
                if len(conversations) == limit:
                    stats["conversations"] = limit
                    return conversations, stats
    stats["conversations"] = len(conversations)
    return conversations, stats


def _rows(path: str, allow_download: bool) -> Iterable[tuple[str, Any]]:
    """(where, row) for each row of a file or hf: dataset; `where` names it in errors."""
    if path.startswith("hf:"):
        yield from _hf_rows(path, allow_download)
        return
    file = Path(path).expanduser()
    if not file.is_file():
        raise GptlabError(
            f"conversation file {path} does not exist; give a JSON or JSONL file of "
            "conversations (or hf:NAME for a Hugging Face dataset, online)"
        )
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise GptlabError(
            f"cannot read {path} as UTF-8 text ({e}); give a JSON or JSONL file"
        ) from None
    if file.suffix.lower() not in (".jsonl", ".ndjson"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # "Extra data": several values, i.e. JSON lines
                raise GptlabError(
                    f"{path} line {e.lineno}: invalid JSON ({e.msg}); fix the file"
                ) from None
        else:
            rows = _top_level_rows(whole, path)
            yield from ((f"{path} row {i}", row) for i, row in enumerate(rows, start=1))
            return
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise GptlabError(
                    f"{path} line {lineno}: invalid JSON ({e.msg}); each line of a JSONL file "
                    "must be one JSON object"
                ) from None
            yield f"{path} line {lineno}", row


def _top_level_rows(whole: Any, path: str) -> list[Any]:
    """The rows of a JSON file: an array, an object holding one list, or a single row."""
    if isinstance(whole, list):
        return whole
    if isinstance(whole, dict):
        if _schema(whole) is not None:
            return [whole]
        lists = [k for k, v in whole.items() if isinstance(v, list)]
        if len(lists) == 1:
            return whole[lists[0]]
        raise GptlabError(
            f"{path}: a JSON object must hold exactly one list of rows, this one has "
            f"{len(lists)} ({', '.join(map(str, lists)) or 'none'}); give an array of rows"
        )
    raise GptlabError(f"{path}: expected a JSON array of rows, got {type(whole).__name__}")


def _hf_rows(path: str, allow_download: bool) -> Iterable[tuple[str, Any]]:
    name, _, split = path.removeprefix("hf:").partition(":")
    if not allow_download:
        raise GptlabError(
            f"{path} needs the network (the datasets library downloads it); run online "
            "(without GPTLAB_OFFLINE) or give a local JSON/JSONL file"
        )
    try:
        import datasets
    except ImportError:
        raise GptlabError(f"{path} needs the datasets library: pip install 'gptlab[hf]'") from None
    try:
        rows = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # the hub's errors are many; all mean "cannot load this one"
        raise GptlabError(f"cannot load {path} with datasets: {str(e).splitlines()[0]}") from None
    for i, row in enumerate(rows, start=1):
        yield f"{path} row {i}", row


def _schema(row: dict) -> str | None:
    if isinstance(row.get("messages"), list):
        return "messages"
    if isinstance(row.get("conversations"), list):
        return "conversations"
    if "instruction" in row and isinstance(row.get("instances"), list):
        return "instances"
    if "instruction" in row and "output" in row:
        return "alpaca"
    return None


def _row_conversations(row: Any, where: str) -> list[list[Message]]:
    """The conversations in one row: one, or one per instance of a self-instruct task."""
    kind = _schema(row) if isinstance(row, dict) else None
    if kind is None:
        keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
        raise GptlabError(
            f"{where}: no known conversation schema (has {keys or 'no keys'}); expected one "
            f"of {SCHEMAS}"
        )
    if kind == "messages":
        return [[_message(m, "role", "content", where) for m in row["messages"]]]
    if kind == "conversations":
        system = row.get("system")  # some ShareGPT exports keep the system prompt beside
        head = [Message("system", _text(system, where, "system"))] if system else []
        return [head + [_message(m, "from", "value", where) for m in row["conversations"]]]
    if kind == "alpaca":
        return [_instruction_pair(row["instruction"], row.get("input", ""), row, where)]
    return [
        _instance_pair(row["instruction"], inst, f"{where} instance {i}")
        for i, inst in enumerate(row["instances"], start=1)
    ]


def _instance_pair(instruction: Any, inst: Any, where: str) -> list[Message]:
    if not isinstance(inst, dict) or "output" not in inst:
        raise GptlabError(f"{where}: an instance must be an object with an output (and input)")
    return _instruction_pair(instruction, inst.get("input", ""), inst, where)


def _instruction_pair(instruction: Any, extra: Any, row: dict, where: str) -> list[Message]:
    """user = instruction (+ blank line + input when there is one), assistant = output."""
    user = _text(instruction, where, "instruction")
    extra = _text(extra if extra is not None else "", where, "input")
    if extra:
        user = f"{user}\n\n{extra}"
    return [Message("user", user), Message("assistant", _text(row["output"], where, "output"))]


def _message(m: Any, role_key: str, content_key: str, where: str) -> Message:
    if not isinstance(m, dict) or role_key not in m:
        raise GptlabError(
            f"{where}: each message must be an object with {role_key!r} and {content_key!r}, "
            f"got {json.dumps(m)[:60]}"
        )
    role = ROLE_NAMES.get(str(m[role_key]).lower())
    if role is None:
        raise GptlabError(
            f"{where}: unknown role {m[role_key]!r}; accepted roles: {', '.join(ROLE_NAMES)}"
        )
    return Message(role, _text(m.get(content_key), where, f"a {role} message's {content_key}"))


def _text(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise GptlabError(f"{where}: {what} must be a string, got {type(value).__name__}")
    return value


# -- tokenizing ---------------------------------------------------------------------------
