"""Weight files read and written one tensor at a time, so a conversion holds one copy at most.

safetensors is a tiny format: an 8-byte little-endian header length, a JSON header giving each
tensor's dtype, shape and byte range, then the raw bytes. We parse the header ourselves and read
each tensor with a plain `readinto` (no memory map: the pages of a mapped file count as resident
memory once touched, which would put the whole source file in RSS next to the converted copy),
and write a file the same way from a list of (name, dtype, shape) and a function producing each
tensor on demand. `pytorch_model.bin` files are opened with `torch.load(weights_only=True,
mmap=True)`: tensors only, never arbitrary pickled objects.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from gptlab.errors import GptlabError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # a larger header is a damaged or foreign file


class TensorSource:
    """Named tensors of one checkpoint (one or several files), read on demand."""

    def __init__(self, files: Sequence[Path]) -> None:
        self._where: dict[str, tuple[Path, torch.dtype, tuple[int, ...], int, int]] = {}
        self._bin: dict[str, torch.Tensor] = {}
        for file in files:
            if file.suffix == ".safetensors":
                self._index_safetensors(file)
            else:
                self._open_bin(file)

    def _index_safetensors(self, file: Path) -> None:
        try:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > MAX_HEADER:
                    raise ValueError(f"header of {n} bytes")
                header = json.loads(f.read(n))
            size = file.stat().st_size
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                if info["dtype"] not in DTYPES or not 0 <= begin <= end <= size - 8 - n:
                    raise ValueError(f"bad entry for {name}")
                dtype, shape = DTYPES[info["dtype"]], tuple(int(d) for d in info["shape"])
                self._where[name] = (file, dtype, shape, 8 + n + begin, 8 + n + end)
        except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
            raise GptlabError(
                f"{file} is not a readable safetensors file ({e}); re-download or re-save it"
            ) from None

    def _open_bin(self, file: Path) -> None:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for such files
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours its message
            first = text.splitlines()[0][:160] if text else type(e).__name__
            raise GptlabError(
                f"{file} was refused: it is not a plain tensor checkpoint ({first}); gptlab "
                "never unpickles anything but tensors, convert it to safetensors first"
            ) from None
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise GptlabError(f"{file} holds something other than a dict of tensors; refused")
        self._bin.update(state)

    def names(self) -> set[str]:
        return set(self._where) | set(self._bin)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._bin:
            return tuple(self._bin[name].shape)
        return self._where[name][2]

    def read(self, name: str) -> torch.Tensor:
        """The tensor `name`, as a fresh CPU tensor."""
        if name in self._bin:
            return self._bin[name].clone()
        file, dtype, shape, begin, end = self._where[name]
        out = torch.empty(shape, dtype=dtype)
        if end > begin:
            with open(file, "rb") as f:
                f.seek(begin)
                view = memoryview(out.view(-1).view(torch.uint8).numpy())
                if f.readinto(view) != end - begin:
                    raise GptlabError(f"{file} is truncated (tensor {name}); re-download it")
        return out


def write_safetensors(
    file: Path,
    entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `entries` (name, dtype, shape) to `file` in that order, asking `produce(name)` for
    each tensor only when it is written, and fsync it."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        span = [offset, offset + n]
        header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": span}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dtype, shape in entries:
            t = produce(name)
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise AssertionError(f"{name}: produced {t.dtype} {tuple(t.shape)}")
            f.write(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        f.flush()
        os.fsync(f.fileno())
