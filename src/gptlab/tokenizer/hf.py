"""HFTokenizer: a Hugging Face `tokenizers` tokenizer behind our Tokenizer interface.

For vocabularies that are not byte-level BPE (SentencePiece-style Llama 2 / Mistral files, with
Metaspace and byte fallback), which our BPETokenizer cannot express. `gptlab import` wraps such
a model's tokenizer.json in one of these; the checkpoint keeps the HF file as hf_tokenizer.json
beside our own tokenizer.json (kind "hf"), so data preparation, sampling and serving load it
like any saved tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gptlab.tokenizer.base import CONFIG_FILE, Tokenizer, read_config

WRAPPED_FILE = "hf_tokenizer.json"  # an HF tokenizer.json kept inside a gptlab checkpoint
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer behind our interface (SentencePiece-style vocabularies
    that are not byte-level BPE). Bytes per id are measured by decoding each id alone."""

    kind = "hf"

    def __init__(
        self, text: str, *, bos: str | None = None, eos: str | None = None, pad: str | None = None
    ) -> None:
        from tokenizers import Tokenizer as HFTok

        self.text = text
        self._tok = HFTok.from_str(text)
        self._plain = HFTok.from_str(text)
        self._plain.encode_special_tokens = True  # special spellings encode as ordinary text
        added = json.loads(text).get("added_tokens", [])
        self.special_tokens = {t["content"]: t["id"] for t in added if t.get("special")}
        for role in (bos, eos, pad):
            if role is not None and role not in self.special_tokens:
                raise ValueError(f"{role!r} is named as bos/eos/pad but is not a special token")
        self.bos, self.eos, self.pad = bos, eos, pad

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode_ordinary(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def _encode_with_special(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int32)  # (V,)
        special = set(self.special_tokens.values())
        for i in range(self.vocab_size):
            if i in special:
                continue
            piece = self._tok.id_to_token(i) or ""
            if _BYTE_TOKEN.fullmatch(piece):
                out[i] = 1  # a byte-fallback token stands for one byte
            else:
                out[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
        return out

    def save(self, directory: str | Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = directory / WRAPPED_FILE
        data.write_text(self.text, encoding="utf-8")
        config = {
            "kind": self.kind,
            "file": WRAPPED_FILE,
            "sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest(),
            "bos": self.bos,
            "eos": self.eos,
            "pad": self.pad,
        }
        path = directory / CONFIG_FILE
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return [path, data]

    @classmethod
    def load(cls, directory: str | Path) -> HFTokenizer:
        directory = Path(directory)
        config = read_config(directory)
        path = directory / str(config.get("file", WRAPPED_FILE))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"cannot read {path} ({e}); re-import the model") from None
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != config.get("sha256"):
            raise ValueError(f"{path} does not match its {CONFIG_FILE} (sha256); re-import")
        return cls(text, bos=config.get("bos"), eos=config.get("eos"), pad=config.get("pad"))

    def _fingerprint_data(self) -> bytes:
        return self.text.encode("utf-8")
