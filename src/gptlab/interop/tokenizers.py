"""Tokenizers across the border: HF files -> our Tokenizer interface, and ours -> tokenizer.json.

Import. A byte-level BPE (GPT-2's vocab.json + merges.txt, or a tokenizer.json with a ByteLevel
pre-tokenizer, as GPT-2, Llama 3 and Qwen2 ship) becomes our BPETokenizer: ranks are the vocab
entries mapped back to raw bytes, and the split regex is GPT-2's or the file's own. That is
exact when merge order equals id order (merge i makes a token with a higher id than merge i-1),
because tiktoken merges by the id of the result and HF by merge position; it holds for all of
those vocabularies. Anything else (SentencePiece-style Llama 2 / Mistral files: Metaspace, byte
fallback) is wrapped as `HFTokenizer`, which runs HF `tokenizers` behind our interface.

Export. A BPETokenizer becomes a tokenizer.json: the same regex split, ByteLevel without its own
regex, vocabulary in GPT-2's byte alphabet, and for each token every split into two tokens as a
merge, ordered by the token's rank (HF's BPE then merges exactly as tiktoken does). A
chat-tuned run's template goes into tokenizer_config.json as `chat_template`, so
`apply_chat_template` renders conversations exactly as gptlab's template does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.byte_map import byte_to_char, unmap
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.hf import HFTokenizer
from gptlab.tokenizer.patterns import GPT2

HF_FILE = "tokenizer.json"  # HF's name; our own tokenizer.json is base.CONFIG_FILE (same name)


# --- import -------------------------------------------------------------------------------


def _ranks_and_specials(
    vocab: dict[str, int], merges: list, added: dict[str, int]
) -> tuple[dict[bytes, int], dict[str, int]] | None:
    """(ranks, special tokens) of a byte-level BPE whose merge order is its id order; None when
    tiktoken's merge-by-rank would encode differently."""
    ranks: dict[bytes, int] = {}
    chars = set(byte_to_char())
    for b, c in enumerate(byte_to_char()):
        if c not in vocab:
            return None
        ranks[bytes([b])] = vocab[c]
    last = -1
    for merge in merges:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = left + right
        if token not in vocab or vocab[token] < last or set(token) - chars:
            return None
        last = vocab[token]
        ranks.setdefault(unmap(token), vocab[token])
    specials = dict(added)
    for token, i in vocab.items():  # entries that are neither bytes nor merges: <|endoftext|>
        if i not in specials.values() and unmap_or_none(token) not in ranks:
            specials[token] = i
    if len(set(ranks.values())) != len(ranks):
        return None
    return ranks, specials


def unmap_or_none(token: str) -> bytes | None:
    try:
        return unmap(token)
    except ValueError:
        return None


def _byte_level_pattern(pre: dict | None) -> str | None:
    """The split regex of a byte-level pre-tokenizer, or None if it is not one we can run."""
    if pre is None:
        return None
    if pre.get("type") == "ByteLevel":
        return GPT2 if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    if pre.get("type") != "Sequence":
        return None
    steps = pre.get("pretokenizers", [])
    if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel":
        return None
    split, level = steps
    if level.get("use_regex") or level.get("add_prefix_space") or split.get("invert"):
        return None
    if split.get("behavior") != "Isolated" or "Regex" not in split.get("pattern", {}):
        return None
    return split["pattern"]["Regex"]


def _roles(folder: Path, specials: dict[str, int], bos_id: int | None, eos_id: int | None):
    """(bos, eos) spellings: tokenizer_config.json's, else the model config's ids."""
    by_id = {i: s for s, i in specials.items()}
    roles = {}
    cfg_file = folder / "tokenizer_config.json"
    doc = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    for role, fallback in (("bos", bos_id), ("eos", eos_id)):
        value = doc.get(f"{role}_token")
        if isinstance(value, dict):
            value = value.get("content")
        roles[role] = value if value in specials else by_id.get(fallback)
    return roles["bos"], roles["eos"]


def tokenizer_from_hf(folder: Path, bos_id: int | None, eos_id: int | None) -> Tokenizer | None:
    """The tokenizer shipped in an HF model folder, or None if it has no tokenizer files."""
    name = folder.name or "hf"
    if (folder / HF_FILE).is_file():
        text = (folder / HF_FILE).read_text(encoding="utf-8")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise GptlabError(f"{folder / HF_FILE} is not valid JSON ({e})") from None
        model = doc.get("model", {})
        added = {t["content"]: t["id"] for t in doc.get("added_tokens", []) if t.get("special")}
        pattern = _byte_level_pattern(doc.get("pre_tokenizer"))
        found = None
        plain = not doc.get("normalizer") and not model.get("byte_fallback")
        all_special = len(added) == len(doc.get("added_tokens", []))
        if model.get("type") == "BPE" and pattern and plain and all_special:
            found = _ranks_and_specials(model["vocab"], model["merges"], added)
        if found is not None:
            ranks, specials = found
            bos, eos = _roles(folder, specials, bos_id, eos_id)
            return BPETokenizer(ranks, pattern, specials, name=name, bos=bos, eos=eos)
        probe = HFTokenizer(text)
        bos, eos = _roles(folder, probe.special_tokens, bos_id, eos_id)
        return HFTokenizer(text, bos=bos, eos=eos)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [ln for ln in lines if ln and not ln.startswith("#version")]
        found = _ranks_and_specials(vocab, merges, {})
        if found is None:
            raise GptlabError(
                f"{folder}: vocab.json and merges.txt are not a byte-level BPE whose merges "
                "come in id order; gptlab cannot run this tokenizer exactly"
            )
        ranks, specials = found
        bos, eos = _roles(folder, specials, bos_id, eos_id)
        return BPETokenizer(ranks, GPT2, specials, name=name, bos=bos, eos=eos)
    return None


# --- export -------------------------------------------------------------------------------


def _bpe_json(tok: BPETokenizer) -> str:
    """tokenizer.json text that HF `tokenizers` encodes exactly as `tok` does."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    spell = byte_to_char()

    def name(b: bytes) -> str:
        return "".join(spell[x] for x in b)

    vocab = {name(token): i for token, i in tok.ranks.items()}
    merges = []
    for token, _ in sorted(tok.ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        splits = [
            (token[:k], token[k:]) for k in range(1, len(token))
            if token[:k] in tok.ranks and token[k:] in tok.ranks
        ]  # fmt: skip
        splits.sort(key=lambda ab: (tok.ranks[ab[0]], tok.ranks[ab[1]]))
        merges += [(name(a), name(b)) for a, b in splits]
    vocab.update(tok.special_tokens)
    hf = HFTok(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tok.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(
        [AddedToken(s, special=True, normalized=False) for s in tok.special_tokens]
    )
    return hf.to_str()


def _char_json(tok: CharTokenizer) -> str:
    """A character vocabulary as a WordLevel model over a split into single characters."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    unk = next(c for c in tok.chars)  # WordLevel needs an unk token; ours refuse unknown chars
    hf = HFTok(models.WordLevel(vocab=dict(tok.stoi), unk_token=unk))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    return hf.to_str()


def export_tokenizer(
    tok: Tokenizer, out: Path, model_max_length: int, chat_template: str | None = None
) -> list[str]:
    """Write tokenizer.json and tokenizer_config.json for `tok` into `out`; the file names.
    `chat_template` (Jinja, tokenizer/chat.py) goes into tokenizer_config.json when given."""
    if isinstance(tok, HFTokenizer):
        text = tok.text
    elif isinstance(tok, BPETokenizer):
        text = _bpe_json(tok)
    elif isinstance(tok, CharTokenizer):
        text = _char_json(tok)
    else:
        raise GptlabError(f"a {tok.kind} tokenizer has no Hugging Face form gptlab can write")
    (out / HF_FILE).write_text(text, encoding="utf-8")
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    for role in ("bos", "eos", "pad"):
        spelling = getattr(tok, role)
        if spelling is not None:
            config[f"{role}_token"] = spelling
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    return [HF_FILE, "tokenizer_config.json"]
