import pytest
import torch

from gptlab.model.config import ModelConfig, MoEConfig
from gptlab.model.gpt import GPT
from gptlab.optim.build import build_optimizer
from gptlab.optim.config import OptimConfig
from gptlab.optim.groups import split_params

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=40)
ADAMW_MATRICES = ("wte.weight", "wpe.weight", "lm_head.weight")


def _kind_by_name(model, opt):
    ids = {id(p): n for n, p in model.named_parameters()}  # first name of a tied tensor
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            assert ids[id(p)] not in out, f"{ids[id(p)]} is in two groups"
            out[ids[id(p)]] = group["name"]
    return out


@pytest.mark.parametrize(
    "extra",
    [{}, {"tie_embeddings": False}, {"moe": MoEConfig(n_experts=4), "mtp_heads": 1}],
    ids=["tied", "untied", "moe+mtp"],
)
def test_every_parameter_in_exactly_one_group_of_the_right_kind(extra):
    model = GPT(ModelConfig(**SHAPE, **extra))
    opt = build_optimizer(model.named_parameters(), OptimConfig(name="muon"))
    assert [g["name"] for g in opt.param_groups] == ["muon", "decay", "no_decay"]
    assert {g["name"]: g["kind"] for g in opt.param_groups} == {
        "muon": "muon",
        "decay": "adamw",
        "no_decay": "adamw",
    }
    where = _kind_by_name(model, opt)
    assert set(where) == {n for n, _ in model.named_parameters()}  # all, each once
    n_grouped = sum(len(g["params"]) for g in opt.param_groups)
    assert n_grouped == len(list(model.parameters()))  # a tied tensor counted once
    for name, p in model.named_parameters():
        if name in ADAMW_MATRICES:
            expected = "decay"
        elif p.dim() < 2 or name.rsplit(".", 1)[-1] in ("bias", "b_in", "b_out"):
            expected = "no_decay"
        else:
            expected = "muon"
        assert where[name] == expected, name
    muon = {n for n, g in where.items() if g == "muon"}
    assert "blocks.0.attn.qkv.weight" in muon and "blocks.1.attn.proj.weight" in muon
    if "moe" in extra:
        assert {"blocks.0.mlp.w_in", "blocks.0.mlp.w_out", "mtp.0.block.mlp.fc.weight"} <= muon
        assert where["blocks.0.mlp.b_in"] == "no_decay"
    else:
        assert "blocks.0.mlp.fc.weight" in muon
    if extra.get("tie_embeddings", True):
        assert "lm_head.weight" not in where  # tied: the tensor is wte.weight


def test_tied_tensor_listed_twice_is_grouped_once():
    model = GPT(ModelConfig(**SHAPE))
    pairs = list(model.named_parameters(remove_duplicate=False))
    groups = split_params(pairs, "muon")
    placed = [id(p) for g in groups.values() for _, p in g]
    assert len(placed) == len(set(placed)) == len(list(model.parameters()))


def test_muon_step_on_moe_expert_stack_orthogonalises_each_expert():
    w = torch.nn.Parameter(torch.zeros(3, 16, 48))  # (E, in, out)
    opt = build_optimizer([("blocks.0.mlp.w_in", w)], OptimConfig(name="muon", weight_decay=0))
    w.grad = torch.randn(3, 16, 48) * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1)
    opt.step()
    s = torch.linalg.svdvals(w.detach())  # (E, 16): every expert gets the same spectrum
    scale = opt.param_groups[0]["lr"] * 0.2 * 48**0.5
    assert ((s / scale) > 0.8).all() and ((s / scale) < 1.2).all()


def test_frozen_parameters_are_left_out():
    model = GPT(ModelConfig(**SHAPE))
    model.wpe.weight.requires_grad_(False)
    opt = build_optimizer(model.named_parameters(), OptimConfig(name="muon"))
    assert all(p is not model.wpe.weight for g in opt.param_groups for p in g["params"])
