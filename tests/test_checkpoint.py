import dataclasses
import json

import pytest
import torch

from gptlab import checkpoint
from gptlab.config import to_dict
from gptlab.errors import GptlabError
from gptlab.model.config import MoEConfig
from gptlab.model.gpt import GPT
from gptlab.train.config import RunConfig


def _save(tmp_path, model_cfg, name="ck"):
    model = GPT(model_cfg)
    cfg = to_dict(RunConfig(model=model_cfg))
    return model, checkpoint.save(tmp_path / name, model, cfg, trainer_state={"step": 3})


def test_round_trip_is_bit_exact(tmp_path, model_cfg):
    model, path = _save(tmp_path, model_cfg)
    loaded = checkpoint.load_model_from_checkpoint(path)
    assert loaded.cfg == model_cfg
    for (n1, p1), (n2, p2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)
    assert loaded.lm_head.weight is loaded.wte.weight  # tying survives the round trip
    assert checkpoint.load_pt(path, checkpoint.STATE) == {"step": 3}


def test_replace_is_atomic_and_recovers(tmp_path, model_cfg):
    _, path = _save(tmp_path, model_cfg)
    # simulate a crash between "move old aside" and "rename new in"
    aside = tmp_path / ".ck.old"
    path.rename(aside)
    assert checkpoint.resolve(path).is_dir() and not aside.exists()
    _save(tmp_path, model_cfg)  # replacing leaves no temporary directories behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_give_one_clear_error(tmp_path, model_cfg, damage):
    _, path = _save(tmp_path, model_cfg)
    f = path / checkpoint.WEIGHTS
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 10)
    with pytest.raises(GptlabError, match="corrupt or truncated"):
        checkpoint.load_model_from_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(GptlabError, match="no checkpoint"):
        checkpoint.load_config(tmp_path / "nope")


def test_pt_files_load_weights_only(tmp_path, model_cfg):
    _, path = _save(tmp_path, model_cfg)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, path / checkpoint.STATE)
    with pytest.raises(GptlabError, match="missing or corrupt"):
        checkpoint.load_pt(path, checkpoint.STATE)


def test_variant_round_trip_keeps_untied_head_and_moe_bias(tmp_path, model_cfg):
    cfg = dataclasses.replace(
        model_cfg,
        tie_embeddings=False,
        pos_emb="rope",
        moe=MoEConfig(n_experts=2, top_k=1, bias_balancing=True),
    )
    model = GPT(cfg)
    model.blocks[0].mlp.expert_bias.fill_(0.25)  # state that is a buffer, not a parameter
    path = checkpoint.save(tmp_path / "ck", model, to_dict(RunConfig(model=cfg)))
    loaded = checkpoint.load_model_from_checkpoint(path)
    assert loaded.lm_head.weight is not loaded.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert torch.all(loaded.blocks[0].mlp.expert_bias == 0.25)


def test_schema_v1_config_migrates_to_unpadded_vocab(tmp_path, model_cfg):
    """gptlab 0.1 checkpoints (schema 1) had no vocab padding; they must still load."""
    v1 = dataclasses.replace(model_cfg, vocab_multiple=1)
    model, path = _save(tmp_path, v1)
    doc = json.loads((path / checkpoint.CONFIG).read_text())
    del doc["config"]["model"]["vocab_multiple"]
    doc["schema_version"] = 1
    (path / checkpoint.CONFIG).write_text(json.dumps(doc))
    loaded = checkpoint.load_model_from_checkpoint(path)
    assert loaded.cfg.vocab_multiple == 1 and loaded.wte.weight.shape[0] == model_cfg.vocab_size
