"""Tiny "chat-tuned" runs for tests, without any training: a GPT whose weights are crafted so
that its greedy reply is known in advance, saved as a checkpoint whose config says it was chat
finetuned (sft.data set, sft.template recorded).

The trick (`bigram_gpt`): every block's output projections are zero and the position
embeddings too, so the residual stream at a position is just the current token's embedding,
and the model is a lookup table from the current token to the next. Give each token of a
chain its own basis direction e_k (scaled) as embedding, and put e_k into the output-head row
of the token that must follow it: after the final LayerNorm that row's logit is about
sqrt(C) * 8, every other logit is 0 or negative. So greedy decoding walks the chain, e.g.
<|assistant_start|> -> "H" -> "i" -> "!" -> <|assistant_end|>, whatever came before.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptlab import checkpoint
from gptlab.config import to_dict
from gptlab.data.config import SFTConfig
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.tokenizer.base import Tokenizer
from gptlab.train.config import RunConfig


def bigram_gpt(vocab_size: int, chain: dict[int, int], seq_len: int = 64) -> GPT:
    """A tiny GPT (untied head) whose greedy next token after `t` is `chain[t]`."""
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=seq_len, vocab_size=vocab_size,
                      tie_embeddings=False)  # fmt: skip
    if len(chain) > cfg.n_embd:
        raise ValueError(f"a chain of {len(chain)} links needs n_embd >= {len(chain)}")
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if name.endswith(("attn.proj.weight", "attn.proj.bias", "mlp.proj.weight",
                              "mlp.proj.bias")) or name == "wpe.weight":  # fmt: skip
                p.zero_()
        params["lm_head.weight"].zero_()
        for k, (token, following) in enumerate(chain.items()):
            params["wte.weight"][token].zero_()
            params["wte.weight"][token, k] = 4.0
            params["lm_head.weight"][following, k] = 8.0
    return model


def save_chat_run(
    path: Path, model: GPT, tokenizer: Tokenizer, template: str | None = "special_tokens"
) -> Path:
    """A checkpoint directory at `path` that loads as a run chat-finetuned with `template`
    (None: a base model's run, sft off)."""
    sft = SFTConfig() if template is None else SFTConfig(data="chats.jsonl", template=template)
    config = RunConfig(model=model.cfg, sft=sft)
    checkpoint.save(path, model, to_dict(config))
    tokenizer.save(path)
    return path
