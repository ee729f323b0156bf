"""Named presets: plain functions returning a RunConfig. Add one by writing a function.

`shakespeare_char` is nanoGPT's GPU recipe; `shakespeare_char_cpu` is tuned to learn Shakespeare
on a 2-core laptop CPU in well under a minute; `gpt2-char`, `llama` and `modern` are the three
architecture recipes at that size (compared in docs/architecture.md); `gpt2` ... `gpt2-xl` are
the published GPT-2 shapes and `llama-15m` ... `llama-100m` small LLaMA-style models; `tiny` is
for tests.

A preset says what it trains: its model.vocab_size is the vocabulary of its data's tokenizer,
so `gptlab info --preset NAME` shows the model `gptlab train --preset NAME` builds (training
replaces vocab_size with the data's). The token-level presets read tiny Shakespeare with the
GPT-2 tokenizer (nanoGPT's `shakespeare` recipe), a corpus that is always at hand; point
--data.dataset at a larger one for real runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from gptlab.data.config import DataConfig
from gptlab.errors import ConfigError
from gptlab.model.config import ModelConfig
from gptlab.optim.config import OptimConfig
from gptlab.train.config import RunConfig, TrainConfig


def shakespeare_char() -> RunConfig:
    """nanoGPT's shakespeare_char: 6 layers, 6 heads, 384 wide, context 256, dropout 0.2."""
    return RunConfig(
        model=ModelConfig(n_layer=6, n_head=6, n_embd=384, seq_len=256, dropout=0.2, bias=False),
        data=DataConfig(dataset="shakespeare_char"),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, beta2=0.99, warmup_steps=100),
        train=TrainConfig(
            max_steps=5000,
            batch_size=64,
            eval_interval=250,
            eval_steps=200,
            log_interval=10,
            out_dir="runs/shakespeare_char",
        ),
    )


def _char_cpu(model: ModelConfig, out_dir: str) -> RunConfig:
    """Shakespeare char on a 2-core CPU: the training settings every CPU recipe shares."""
    return RunConfig(
        model=model,
        data=DataConfig(dataset="shakespeare_char"),
        optim=OptimConfig(lr=4e-3, min_lr=4e-4, weight_decay=0.0, beta2=0.99, warmup_steps=30),
        train=TrainConfig(
            max_steps=480,
            batch_size=32,
            eval_interval=480,
            eval_steps=25,
            log_interval=40,
            out_dir=out_dir,
        ),
    )


# The three Shakespeare-char CPU recipes compared in docs/architecture.md: the same width,
# depth and context (2 x 256, T = 64, about 1.6M parameters), differing only in architecture.
CHAR_CPU_SHAPE = dict(n_layer=2, n_head=4, n_embd=256, seq_len=64, dropout=0.0, bias=False)


def gpt2_char() -> RunConfig:
    """GPT-2-style recipe on Shakespeare char (learned positions, LayerNorm, GELU, tied)."""
    return _char_cpu(ModelConfig(**CHAR_CPU_SHAPE), "runs/gpt2-char")


def llama() -> RunConfig:
    """LLaMA-style recipe on Shakespeare char: RoPE, RMSNorm, SwiGLU, GQA (2 kv heads), no
    bias, untied embeddings. d_ff 768 (not 8/3 C) gives back the parameters GQA saves, so the
    three recipes have about the same count."""
    model = ModelConfig(
        **CHAR_CPU_SHAPE,
        pos_emb="rope",
        norm="rmsnorm",
        mlp="swiglu",
        d_ff=768,
        n_kv_head=2,
        tie_embeddings=False,
    )
    return _char_cpu(model, "runs/llama")


def modern() -> RunConfig:
    """The modded-nanogpt-style small-model recipe on Shakespeare char: RoPE, QK-norm, ReLU^2,
    RMSNorm without weights, zero-initialised output projections, untied embeddings and a
    logit softcap."""
    model = ModelConfig(
        **CHAR_CPU_SHAPE,
        pos_emb="rope",
        norm="rmsnorm",
        norm_weight=False,
        qk_norm=True,
        mlp="relu2",
        zero_init_proj=True,
        tie_embeddings=False,
        logit_softcap=15.0,
    )
    return _char_cpu(model, "runs/modern")


def shakespeare_char_cpu() -> RunConfig:
    """A small char model that reaches val loss < 1.88 on 2 CPU cores in well under a minute.

    The gpt2-char shape (2 x 256, T = 64, batch 32: on a 2-core Xeon it beat 4 x 128, 6 x 128,
    3 x 192 and 2 x 320 at this budget) trained with Muon and a linear decay: 200 steps reach
    1.84-1.87 over seeds 1337, 1, 2, 3 and 4, where AdamW needs 480 (1.85-1.87), so the whole
    command takes about 10.3 s instead of 18-19 s on that Xeon (docs/training.md, "The CPU speed
    record"). Muon's matrix lr 0.02 beat 0.005, 0.01, 0.025 and 0.03; a constant momentum of 0.8
    beat 0.7, 0.75, 0.85, 0.9 and the default 0.85 -> 0.95 ramp (which missed 1.88 on seed 3);
    3 Polar Express steps (batched per shape) cost 4 ms/step less than 5 and still pass; the
    linear decay beat cosine (200 cosine steps miss on seed 1) and WSD; AdamW keeps lr 4e-3
    for embeddings and gains (6e-3 and a 20-step warmup were no better).
    """
    base = gpt2_char()
    return dataclasses.replace(
        base,
        optim=dataclasses.replace(
            base.optim,
            name="muon",
            muon_lr=0.02,
            muon_ns_steps=3,
            muon_momentum=0.8,  # constant: in 200 steps 0.8 beat 0.7-0.9 and the 0.85 -> 0.95 ramp
            muon_momentum_start=0.8,
            muon_momentum_warmup_steps=0,
            schedule="linear",
        ),
        train=dataclasses.replace(
            base.train, max_steps=200, eval_interval=200, out_dir="runs/shakespeare_char_cpu"
        ),
    )


GPT2_VOCAB = 50257  # the GPT-2 tokenizer: 256 bytes + 50000 merges + <|endoftext|>


def _gpt2_tokens() -> DataConfig:
    """Tiny Shakespeare (registered as shakespeare_char) in GPT-2 tokens: about 300K train
    tokens, nanoGPT's `shakespeare` dataset."""
    return DataConfig(dataset="shakespeare_char", tokenizer="gpt2")


def _gpt2(n_layer: int, n_head: int, n_embd: int, name: str) -> RunConfig:
    """A GPT-2 shape (Radford et al. 2019): vocab 50257, context 1024, biases, tied head."""
    model = ModelConfig(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        seq_len=1024,
        vocab_size=GPT2_VOCAB,
        bias=True,
    )
    return RunConfig(
        model=model,
        data=_gpt2_tokens(),
        optim=OptimConfig(lr=6e-4, min_lr=6e-5, weight_decay=0.1, beta2=0.95, warmup_steps=700),
        train=TrainConfig(
            max_steps=600_000, batch_size=12, grad_accum_steps=40, out_dir=f"runs/{name}"
        ),
    )


def gpt2() -> RunConfig:
    """GPT-2 small, 124M parameters: 12 layers, 12 heads, 768 wide."""
    return _gpt2(12, 12, 768, "gpt2")


def gpt2_medium() -> RunConfig:
    """GPT-2 medium, 355M: 24 layers, 16 heads, 1024 wide."""
    return _gpt2(24, 16, 1024, "gpt2-medium")


def gpt2_large() -> RunConfig:
    """GPT-2 large, 774M: 36 layers, 20 heads, 1280 wide."""
    return _gpt2(36, 20, 1280, "gpt2-large")


def gpt2_xl() -> RunConfig:
    """GPT-2 XL, 1.5B: 48 layers, 25 heads, 1600 wide."""
    return _gpt2(48, 25, 1600, "gpt2-xl")


def _llama(n_layer: int, n_head: int, n_kv_head: int, n_embd: int, name: str) -> RunConfig:
    """A small LLaMA-2-style model (the llama2.c "stories" shapes, with GQA): context 256, RoPE,
    RMSNorm, SwiGLU, no biases, tied embeddings as in llama2.c. The name gives the size at
    llama2.c's 32000-token vocabulary; with the GPT-2 tokenizer's 50257 the tied embedding is
    larger (llama-15m has 19.8M parameters, llama-40m 49.0M, llama-100m 114.2M)."""
    model = ModelConfig(
        n_layer=n_layer,
        n_head=n_head,
        n_kv_head=n_kv_head,
        n_embd=n_embd,
        seq_len=256,
        vocab_size=GPT2_VOCAB,
        bias=False,
        pos_emb="rope",
        norm="rmsnorm",
        mlp="swiglu",
    )
    return RunConfig(
        model=model,
        data=_gpt2_tokens(),
        optim=OptimConfig(lr=5e-4, min_lr=5e-5, weight_decay=0.1, beta2=0.95, warmup_steps=1000),
        train=TrainConfig(
            max_steps=100_000, batch_size=32, grad_accum_steps=4, out_dir=f"runs/{name}"
        ),
    )


def llama_15m() -> RunConfig:
    """6 layers, 6 heads (2 kv heads), 288 wide."""
    return _llama(6, 6, 2, 288, "llama-15m")


def llama_40m() -> RunConfig:
    """8 layers, 8 heads (4 kv heads), 512 wide."""
    return _llama(8, 8, 4, 512, "llama-40m")


def llama_100m() -> RunConfig:
    """12 layers, 12 heads (4 kv heads), 768 wide."""
    return _llama(12, 12, 4, 768, "llama-100m")


def finetune_gpt2_shakespeare() -> RunConfig:
    """nanoGPT's "finetune GPT-2 on Shakespeare": Tiny Shakespeare in GPT-2 tokens, a small
    constant learning rate, 20 steps of 32 sequences, evaluating every 5. Pass the weights with
    --init-from RUN_DIR or hf:DIR (their architecture replaces the GPT-2 small shape here);
    docs/interop.md."""
    cfg = gpt2()
    return dataclasses.replace(
        cfg,
        optim=OptimConfig(lr=3e-5, min_lr=3e-5, warmup_steps=0, schedule="constant"),
        train=TrainConfig(
            max_steps=20,
            batch_size=1,
            grad_accum_steps=32,
            eval_interval=5,
            eval_steps=40,
            log_interval=1,
            out_dir="runs/finetune_gpt2_shakespeare",
        ),
    )


def sft() -> RunConfig:
    """`gptlab sft`'s defaults: chat finetuning with AdamW at a small learning rate (1e-4,
    decaying to 1e-5) for 300 steps of 16 conversations, evaluating on the held-out ones every
    50. `--init-from` replaces the model with the source's; the small GPT-2-token shape here
    is for training on conversations from scratch (docs/finetuning.md)."""
    return RunConfig(
        model=ModelConfig(
            n_layer=4, n_head=4, n_embd=128, seq_len=512, vocab_size=50257, dropout=0.0
        ),
        data=_gpt2_tokens(),
        optim=OptimConfig(lr=1e-4, min_lr=1e-5, warmup_steps=10, weight_decay=0.0),
        train=TrainConfig(
            max_steps=300,
            batch_size=8,
            grad_accum_steps=2,
            eval_interval=50,
            eval_steps=20,
            log_interval=10,
            out_dir="runs/sft",
        ),
    )


# The worked chat example (docs/finetuning.md): a BPE trained on Gutenberg with gptlab's
# reserved chat tokens, a small LLaMA-style model pretrained on Gutenberg, then chat SFT.
CHAT_BPE_DIR = "runs/chat-bpe"  # gptlab tokenizer train GUTENBERG --vocab-size 4096 --out it
CHAT_BPE_VOCAB = 4096


def chat_base() -> RunConfig:
    """Step 1 of the chat example: a 4 x 192 LLaMA-style model (RoPE, RMSNorm, SwiGLU; 2.6M
    parameters) pretrained on the Gutenberg corpus with the BPE in runs/chat-bpe, in a few
    minutes on 2 CPU cores."""
    model = ModelConfig(
        n_layer=4,
        n_head=4,
        n_embd=192,
        seq_len=256,
        vocab_size=CHAT_BPE_VOCAB,
        pos_emb="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        dropout=0.0,
    )
    return RunConfig(
        model=model,
        data=DataConfig(dataset="gutenberg", tokenizer=CHAT_BPE_DIR),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, weight_decay=0.0, beta2=0.99, warmup_steps=50),
        train=TrainConfig(
            max_steps=1200,
            batch_size=16,
            eval_interval=400,
            eval_steps=10,
            log_interval=50,
            out_dir="runs/chat-base",
        ),
    )


def chat_sft() -> RunConfig:
    """Step 2 of the chat example: `gptlab sft --preset chat_sft --init-from runs/chat-base
    --data chat_sft` (the shared conversations): 120 steps of 16 packed rows (about 40
    conversations each, so about 7 passes over the 632 training conversations; longer only
    overfits them: the held-out loss rose again after about 100 steps at lr 1e-3)."""
    cfg = sft()
    return dataclasses.replace(
        cfg,
        model=chat_base().model,
        data=chat_base().data,
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, weight_decay=0.0, beta2=0.99, warmup_steps=20),
        train=dataclasses.replace(
            cfg.train, max_steps=120, eval_interval=20, out_dir="runs/chat-sft"
        ),
    )


def tiny() -> RunConfig:
    """A 2-layer, 32-wide model for tests: trains in a second."""
    return RunConfig(
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32, seq_len=32, dropout=0.0),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=5),
        train=TrainConfig(
            max_steps=20,
            batch_size=8,
            eval_interval=10,
            eval_steps=2,
            log_interval=5,
            device="cpu",
            dtype="float32",
            out_dir="runs/tiny",
        ),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "shakespeare_char": shakespeare_char,
    "shakespeare_char_cpu": shakespeare_char_cpu,
    "gpt2-char": gpt2_char,
    "llama": llama,
    "modern": modern,
    "gpt2": gpt2,
    "gpt2-medium": gpt2_medium,
    "gpt2-large": gpt2_large,
    "gpt2-xl": gpt2_xl,
    "llama-15m": llama_15m,
    "llama-40m": llama_40m,
    "llama-100m": llama_100m,
    "finetune_gpt2_shakespeare": finetune_gpt2_shakespeare,
    "sft": sft,
    "chat_base": chat_base,
    "chat_sft": chat_sft,
    "tiny": tiny,
}


def get_preset(name: str) -> RunConfig:
    """The preset called `name`; ConfigError listing the presets if there is none."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()
