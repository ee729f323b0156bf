"""OpenAI's pretrained encodings (gpt2, cl100k_base, o200k_base) as BPETokenizers, offline first.

Where the files are looked for, in order: the data folder (`gpt2_tokenizer/{encoder.json,
vocab.bpe}`, `tiktoken/<name>.tiktoken`), a tiktoken cache folder (files named sha1 of their URL,
as tiktoken itself stores them), and only when downloads are allowed, tiktoken's own loader.
Every file is checked against the sha256 tiktoken pins, so a truncated copy fails loudly.

GPT-2 ships in the older "data gym" form: encoder.json maps token strings, written in GPT-2's
printable byte alphabet, to ids, and vocab.bpe lists the merges in order. We convert it to ranks
ourselves and check the two files agree (merge i produces id 256 + i); the ids equal tiktoken's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.tokenizer.bpe import BPETokenizer, parse_ranks
from gptlab.tokenizer.byte_map import unmap
from gptlab.tokenizer.patterns import get_pattern

ENDOFTEXT = "<|endoftext|>"
_FIM = {"<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260}
_BLOB = "https://openaipublic.blob.core.windows.net"


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str

    @property
    def cache_name(self) -> str:
        """The file name tiktoken's cache uses for this URL."""
        return hashlib.sha1(self.url.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Pretrained:
    name: str
    pattern: str  # one of our pattern names
    special_tokens: dict[str, int]
    files: dict[str, RemoteFile]  # local file name -> where it comes from
    local_dir: str  # folder under the data dir holding the files


PRETRAINED = {
    "gpt2": Pretrained(
        name="gpt2",
        pattern="gpt2",
        special_tokens={ENDOFTEXT: 50256},
        files={
            "encoder.json": RemoteFile(
                f"{_BLOB}/gpt-2/encodings/main/encoder.json",
                "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            ),
            "vocab.bpe": RemoteFile(
                f"{_BLOB}/gpt-2/encodings/main/vocab.bpe",
                "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            ),
        },
        local_dir="gpt2_tokenizer",
    ),
    "cl100k_base": Pretrained(
        name="cl100k_base",
        pattern="gpt4",
        special_tokens={ENDOFTEXT: 100257, **_FIM, "<|endofprompt|>": 100276},
        files={
            "cl100k_base.tiktoken": RemoteFile(
                f"{_BLOB}/encodings/cl100k_base.tiktoken",
                "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
            )
        },
        local_dir="tiktoken",
    ),
    "o200k_base": Pretrained(
        name="o200k_base",
        pattern="o200k",
        special_tokens={ENDOFTEXT: 199999, "<|endofprompt|>": 200018},
        files={
            "o200k_base.tiktoken": RemoteFile(
                f"{_BLOB}/encodings/o200k_base.tiktoken",
                "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
            )
        },
        local_dir="tiktoken",
    ),
}


def load_pretrained(
    name: str,
    *,
    data_dir: Path | None = None,
    tiktoken_cache_dir: Path | None = None,
    allow_download: bool = False,
) -> BPETokenizer:
    """A pretrained encoding by name; GptlabError saying where to put the files if absent."""
    if name not in PRETRAINED:
        choices = ", ".join(PRETRAINED)
        raise ValueError(f"unknown pretrained encoding {name!r}; choose one of: {choices}")
    spec = PRETRAINED[name]
    blobs = {file: _read_local(spec, file, data_dir, tiktoken_cache_dir) for file in spec.files}
    if any(blob is None for blob in blobs.values()):
        if not allow_download:
            raise GptlabError(_where_to_put(spec, data_dir))
        blobs = {file: _download(remote) for file, remote in spec.files.items()}
    if name == "gpt2":
        ranks = gpt2_ranks(blobs["encoder.json"], blobs["vocab.bpe"])  # type: ignore[arg-type]
    else:
        ranks = parse_ranks(blobs[f"{name}.tiktoken"].decode("ascii"), f"{name}.tiktoken")  # type: ignore[union-attr]
    return BPETokenizer(
        ranks,
        get_pattern(spec.pattern),
        spec.special_tokens,
        name=name,
        bos=ENDOFTEXT,
        eos=ENDOFTEXT,
    )


def _read_local(
    spec: Pretrained, file: str, data_dir: Path | None, cache_dir: Path | None
) -> bytes | None:
    """The file's bytes from the data folder or tiktoken's cache, hash-checked; None if absent."""
    remote = spec.files[file]
    candidates = []
    if data_dir is not None:
        candidates.append(Path(data_dir) / spec.local_dir / file)
    if cache_dir is not None:
        candidates.append(Path(cache_dir) / remote.cache_name)
    for path in candidates:
        if path.is_file():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != remote.sha256:
                raise ValueError(
                    f"{path} is not the published {file} (sha256 differs); delete it and copy "
                    f"it again from {remote.url}"
                )
            return data
    return None


def _download(remote: RemoteFile) -> bytes:
    """Through tiktoken's loader, which keeps its own cache and checks the hash."""
    from tiktoken.load import read_file_cached

    try:
        return read_file_cached(remote.url, remote.sha256)
    except Exception as e:  # network errors come from requests; keep the message, drop the trace
        raise GptlabError(f"could not download {remote.url} ({e})") from None


def _where_to_put(spec: Pretrained, data_dir: Path | None) -> str:
    folder = f"{data_dir}/{spec.local_dir}" if data_dir else f"$GPTLAB_DATA_DIR/{spec.local_dir}"
    files = " and ".join(spec.files)
    urls = " and ".join(r.url for r in spec.files.values())
    return (
        f"the {spec.name} tokenizer files are not available offline: put {files} in {folder} "
        f"(from {urls}), or allow downloads (unset GPTLAB_OFFLINE)"
    )


def gpt2_ranks(encoder_json: bytes, vocab_bpe: bytes) -> dict[bytes, int]:
    """GPT-2's ranks from its data-gym files; ValueError if the two files disagree."""
    encoder = json.loads(encoder_json)
    ranks = {unmap(token): i for token, i in encoder.items() if token != ENDOFTEXT}
    if len(ranks) != len(encoder) - 1:
        raise ValueError("encoder.json maps two entries to the same bytes; re-copy the file")
    lines = vocab_bpe.decode("utf-8").split("\n")
    merges = [line.split() for line in lines[1:] if line]  # line 0 is '#version: 0.2'
    for i, (left, right) in enumerate(merges):
        if ranks.get(unmap(left) + unmap(right)) != 256 + i:
            raise ValueError(
                f"vocab.bpe merge {i + 1} ({left} {right}) does not give id {256 + i} in "
                "encoder.json; the two files are from different vocabularies, re-copy both"
            )
    singles = sorted(i for token, i in ranks.items() if len(token) == 1)
    if singles != list(range(256)) or len(ranks) != 256 + len(merges):
        raise ValueError("encoder.json and vocab.bpe do not describe a byte-level BPE; re-copy")
    return ranks
