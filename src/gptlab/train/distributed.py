"""Data parallelism over torchrun processes: DDP or FSDP2, and what the loop needs around them.

Every rank runs the same loop on different micro-batches; gradients are averaged across ranks
before the optimizer step, so W ranks x A micro-batches train like 1 rank x (W A) micro-batches.

- DDP (`train.strategy ddp`) keeps a full replica of weights, gradients and optimizer state on
  every rank and all-reduces the gradients during the backward pass of the last micro-batch of
  a step (`no_sync` skips the all-reduce on the others: their gradients just accumulate).
  With `--train.compile` the DDP wrapper itself is compiled, so the compiled backward still
  overlaps the all-reduce of each gradient bucket with the rest of the backward pass.
- FSDP2 (`train.strategy fsdp`, torch's `fully_shard`) keeps 1/W of every weight, gradient and
  optimizer state on each rank: each block's weights are all-gathered just before they are
  used and freed after, and gradients are reduce-scattered after every micro-batch so each rank
  keeps only its shard (accumulating unsharded gradients would cost a full copy per rank).
  Memory per rank falls by about W for the model state, at the cost of more communication. A
  mixed-precision policy runs the gathered weights in the compute dtype and reduces gradients
  in fp32; the sharded master weights stay fp32.

`build_model` builds the model for either strategy. Under FSDP the full model never exists on
any device: it is built on the meta device (shapes only), sharded, and then each rank allocates
and initialises only its own shards, drawing every full parameter on the CPU, one at a time, so
the shards hold exactly what `GPT(cfg)` holds after the same seed (`init_shards`).

Checkpoints are gathered to rank 0 and written in the single-process format (full weights in
safetensors, optimizer state keyed by parameter name), so any checkpoint resumes under any
world size and either strategy, and exports or samples with no distributed code at all. The
price is that rank 0 must hold the full state in CPU memory once per save, fine for the model
sizes gptlab targets; past that, torch.distributed.checkpoint writes sharded files instead.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel  # loaded by torch itself

from gptlab import checkpoint
from gptlab.config import to_dict
from gptlab.errors import ConfigError, GptlabError
from gptlab.infer.load import WeightSource, open_weights
from gptlab.model.config import ModelConfig
from gptlab.model.gpt import GPT
from gptlab.model.lora import is_adapter, load_adapter_state
from gptlab.runtime import Runtime, seed_everything

log = logging.getLogger(__name__)

# torch's FSDP, DTensor and distributed-checkpoint modules are imported where a
# distributed run needs them: together they take 0.7 s to import, which a one-process run (the
# CPU default) never needs. Until one of them is imported, no model or tensor can be of its type.


def is_fsdp(model: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def is_dtensor(t: Any) -> bool:
    tensor = sys.modules.get("torch.distributed.tensor")
    return tensor is not None and isinstance(t, tensor.DTensor)


def _full_state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def build_model(
    model_cfg: ModelConfig,
    strategy: str,
    runtime: Runtime,
    seed: int,
    before_wrap: Callable[[GPT], None] | None = None,
) -> tuple[GPT, nn.Module]:
    """(model, wrapped): the model initialised from `seed` on `runtime.device`, and the module
    to run training forward passes through (`wrap_model`). `before_wrap(model)` runs between
    construction and wrapping, e.g. for activation checkpointing and per-block compile.

    Under FSDP the model is built on the meta device, `before_wrap` and sharding see it there,
    and only then are this rank's shards allocated and initialised (`init_shards`): the
    parameters equal those of the other strategies, without the full model ever existing."""
    seed_everything(seed)  # the same initial weights on every rank
    if not (runtime.distributed and strategy == "fsdp"):
        model = GPT(model_cfg).to(runtime.device)
        if before_wrap is not None:
            before_wrap(model)
        return model, wrap_model(model, strategy, runtime)
    with torch.device("meta"):
        model = GPT(model_cfg)  # shapes only: no memory, no random numbers drawn
    if before_wrap is not None:
        before_wrap(model)
    shard_model(model, runtime)
    model.to_empty(device=runtime.device)  # this rank's shards and the buffers, uninitialised
    init_shards(model)
    return model, model


def wrap_model(model: nn.Module, strategy: str, runtime: Runtime) -> nn.Module:
    """The module to run training forward passes through: `model` itself for one process, a
    DDP wrapper, or `model` sharded in place by FSDP2 (`shard_model`)."""
    if not runtime.distributed:
        return model
    if strategy == "ddp":
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    shard_model(model, runtime)
    return model


def shard_model(model: nn.Module, runtime: Runtime) -> None:
    """Shard `model` in place with FSDP2 over all ranks: each block (and multi-token-prediction
    block) as one unit, then the root (embeddings, final norm, head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(runtime.device.type, (runtime.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=runtime.compute_dtype, reduce_dtype=torch.float32)
    for block in [*model.blocks, *model.mtp]:  # one all-gather per block, freed after use
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


@torch.no_grad()
def init_shards(model: GPT) -> None:
    """Initialise a sharded model (after `to_empty`) to exactly what `GPT(cfg)` would hold.

    GPT(cfg) draws each parameter on the CPU from torch's global generator, in
    `named_parameters` order. So does this, one full parameter at a time (the extra memory is one
    parameter), and each rank keeps its shard of it (`distribute_tensor` sends rank 0's; every
    rank drew the same numbers, so all generators stay in step). Buffers are recomputed."""
    for name, param in model.named_parameters():
        full = torch.empty(param.shape, dtype=param.dtype, device="cpu")  # where GPT(cfg) draws
        model.init_parameter(name, full)
        if is_dtensor(param):
            from torch.distributed.tensor import distribute_tensor

            full = distribute_tensor(full.to(param.device), param.device_mesh, param.placements)
        param.copy_(full)
    model.init_buffers()


def load_weights(model: nn.Module, path: Path, adapters_only: bool = False) -> None:
    """Load a checkpoint's full weights into `model`, plain or sharded by FSDP (each rank reads
    the whole file and keeps its shards). Call it on every rank. `adapters_only`: the
    checkpoint of a LoRA run holds only the adapters; the base is already loaded."""
    if adapters_only:
        try:
            load_adapter_state(model, checkpoint.read_weights(path))
        except ValueError as e:
            raise GptlabError(f"{Path(path) / checkpoint.WEIGHTS}: {e}") from None
        return
    if not is_fsdp(model):
        checkpoint.load_weights(model, path)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    for module in model.modules():  # after a forward the root keeps its gathered weights
        if is_fsdp(module):
            module.reshard()
    state = checkpoint.read_weights(path)
    for alias, name in checkpoint.tied_aliases(model).items():
        if name in state:
            state[alias] = state[name]
    try:
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    except (KeyError, RuntimeError, ValueError) as e:
        raise GptlabError(
            f"{Path(path) / checkpoint.WEIGHTS} does not match the model in its config.json "
            f"({e}); the checkpoint is damaged"
        ) from None


# ModelConfig fields `--init-from` lets a run change: none changes a weight's shape except
# seq_len, whose learned position table is cropped or extended (new rows keep their fresh init)
INIT_FROM_MAY_CHANGE = (
    "seq_len", "rope_scaling", "rope_factor", "dropout", "attn_backend", "vocab_multiple",
    "doc_mask", "zero_init_proj",
)  # fmt: skip


def open_init_source(cfg: ModelConfig, tokenizer: Any) -> WeightSource:
    """The weights `cfg.train.init_from` names, checked against the run: the architecture must be
    the source's (but for INIT_FROM_MAY_CHANGE) and the data tokenized as the source was."""
    spec = cfg.train.init_from
    source = open_weights(spec)
    ours, theirs = to_dict(cfg.model), to_dict(source.cfg)
    changed = [k for k in ours if k not in INIT_FROM_MAY_CHANGE and ours[k] != theirs[k]]
    if "vocab_size" in changed:
        raise ConfigError(
            f"--init-from {spec}: the data's tokenizer has {cfg.model.vocab_size} ids but the "
            f"source model {source.cfg.vocab_size}; prepare the data with the source's "
            f"tokenizer (--data.tokenizer)"
        )
    if changed:
        k = changed[0]
        raise ConfigError(
            f"--init-from {spec} takes the architecture from the source, but model.{k} is "
            f"{ours[k]!r} here and {theirs[k]!r} there; drop the override (only a longer "
            "--model.seq_len, with --model.rope_scaling for RoPE, may change; docs/interop.md)"
        )
    fingerprint = tokenizer.fingerprint() if tokenizer is not None else None
    if source.tokenizer is not None and fingerprint != source.tokenizer.fingerprint():
        raise ConfigError(
            f"--init-from {spec}: the data is tokenized with {tokenizer.describe()}, but the "
            f"source model with {source.tokenizer.describe()}; prepare the data with the "
            "source's tokenizer (--data.tokenizer)"
        )
    m, s = cfg.model, source.cfg
    if m.pos_emb == "rope" and m.seq_len > s.seq_len and m.rope_scaling == "none":
        log.warning(
            "warning: the context grows from %d to %d tokens with plain RoPE; positions past "
            "%d were never trained (--model.rope_scaling linear --model.rope_factor %g "
            "interpolates them instead)", s.seq_len, m.seq_len, s.seq_len, m.seq_len / s.seq_len
        )  # fmt: skip
    return source


def _init_tensor(name: str, current: torch.Tensor, source: WeightSource) -> torch.Tensor:
    """The source's tensor for parameter `name`, fitted to `current` (its full, freshly
    initialised value): a longer position table keeps the new rows, padded vocab rows are 0."""
    t = source.read(name).to(current.dtype)
    if t.shape == current.shape:
        return t
    out = current.detach().clone()
    if name == "wpe.weight":
        n = min(t.shape[0], out.shape[0])
        out[:n] = t[:n]
        return out
    if name in ("wte.weight", "lm_head.weight"):  # another vocab_multiple: padding rows differ
        n = source.cfg.vocab_size
        out.zero_()
        out[:n] = t[:n]
        return out
    raise GptlabError(f"--init-from: {name} has shape {tuple(t.shape)}, not {tuple(out.shape)}")


@torch.no_grad()
def load_init_weights(model: nn.Module, source: WeightSource) -> None:
    """Copy the source's weights into `model` (plain, DDP-to-be or FSDP-sharded), one tensor at
    a time for a plain model. Only weights: the optimizer and step start fresh."""
    base = [(n, p) for n, p in model.named_parameters() if not is_adapter(n)]  # LoRA: fresh
    missing = [n for n, _ in base if n not in source.names]
    if missing:
        raise GptlabError(f"--init-from {source.path} lacks weights {missing[:3]}")
    if not is_fsdp(model):
        for name, p in base:
            p.copy_(_init_tensor(name, p, source))
        log.info("initialised from %s", source.path)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = {}
    for name, p in model.named_parameters():
        current = p.full_tensor() if is_dtensor(p) else p
        state[name] = _init_tensor(name, current.cpu(), source)
    for alias, name in checkpoint.tied_aliases(model).items():
        state[alias] = state[name]
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    log.info("initialised from %s", source.path)


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, enabled: bool) -> Iterator[None]:
    """Within it, a DDP backward pass all-reduces gradients only if `enabled` (the last
    micro-batch of a step); otherwise they accumulate locally with no communication.

    FSDP always reduce-scatters: skipping it would keep full-size unsharded gradients on every
    rank between micro-batches, undoing the memory saving FSDP is used for."""
    parallel = sys.modules.get("torch.nn.parallel")  # imported by wrap_model for DDP
    if (
        parallel is not None
        and isinstance(wrapped, parallel.DistributedDataParallel)
        and not enabled
    ):
        with wrapped.no_sync():
            yield
    else:
        yield


def mean_across_ranks(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The average of a tensor over all ranks (the tensor itself for one process)."""
    if runtime.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= runtime.world_size
    return value


def sum_across_ranks(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The sum of a tensor over all ranks, on the run's device (the tensor for one process)."""
    if runtime.distributed:
        value = value.to(runtime.device, copy=True)
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A full plain tensor from a DTensor (e.g. FSDP's gradient norm), or `t` itself."""
    return t.full_tensor() if is_dtensor(t) else t


def gather_objects(obj: Any, runtime: Runtime) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable Python objects, e.g. RNG
    and loader states); [obj] for one process."""
    if not runtime.distributed:
        return [obj]
    out: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Full (unsharded) weights on CPU for rank 0 to save; None on other ranks of an FSDP job.
    Every rank must call it (it all-gathers FSDP shards)."""
    if not is_fsdp(model):
        return None  # plain and DDP models: rank 0 saves its own full copy directly
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_full_state_options())
    return state or None


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, unsharded, on CPU (empty on ranks other than
    0 when distributed). Every rank must call it. `model` is the unwrapped (or FSDP) module.
    A plain model's is built here (`named_optimizer_state`), in the format torch's
    distributed checkpoint gives, without importing it."""
    if not is_fsdp(model):
        if dist.is_initialized() and dist.get_rank() != 0:
            return {}
        return named_optimizer_state(model, optimizer)
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_state_options())


def _positions(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter in the optimizer's own order (its state_dict's int ids)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def named_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with parameter names for its int ids and tensors on the CPU:
    {"state": {name: {...}}, "param_groups": [{..., "params": [name, ...]}]}."""
    raw, fqn = optimizer.state_dict(), _positions(model, optimizer)
    state = {
        fqn[i]: {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in s.items()}
        for i, s in raw["state"].items()
    }
    groups = [{**g, "params": [fqn[i] for i in g["params"]]} for g in raw["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full, name-keyed optimizer state, resharding it for FSDP (every rank reads the
    same file). Checkpoints from before name keys (integer ids) load directly."""
    if any(isinstance(k, int) for k in state.get("state", {})):
        optimizer.load_state_dict(state)
        return
    if not is_fsdp(model):
        index = {name: i for i, name in enumerate(_positions(model, optimizer))}
        optimizer.load_state_dict({
            "state": {index[n]: s for n, s in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                             for g in state["param_groups"]],
        })  # fmt: skip
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )
