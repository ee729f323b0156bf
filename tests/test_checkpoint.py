import dataclasses
import json
import os
import shutil
from pathlib import Path

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


def _listing(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _interrupted_save(tmp_path, model_cfg):
    """A checkpoint whose replacement crashed between "move the old copy aside" and "rename the
    new one in": only .ck.old (the previous copy) and a .ck.tmp-* directory exist."""
    old_model, path = _save(tmp_path, model_cfg)
    path.rename(tmp_path / ".ck.old")
    (tmp_path / ".ck.tmp-crashed").mkdir()
    (tmp_path / ".ck.tmp-crashed" / checkpoint.CONFIG).write_text("{")  # half written
    return old_model, path


def test_readers_of_an_interrupted_save_read_the_previous_copy_and_write_nothing(
    tmp_path, model_cfg
):
    old_model, path = _interrupted_save(tmp_path, model_cfg)
    before = _listing(tmp_path)
    assert checkpoint.resolve(path) == tmp_path / ".ck.old"
    assert checkpoint.load_config(path)["model"]["n_embd"] == model_cfg.n_embd
    assert checkpoint.load_pt(path, checkpoint.STATE) == {"step": 3}
    loaded = checkpoint.load_model_from_checkpoint(path)
    for (name, a), b in zip(
        old_model.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert _listing(tmp_path) == before  # nothing renamed, created or deleted


def test_save_repairs_an_interrupted_save(tmp_path, model_cfg):
    _interrupted_save(tmp_path, model_cfg)
    model, path = _save(tmp_path, model_cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    loaded = checkpoint.load_model_from_checkpoint(path)
    assert torch.equal(loaded.wte.weight, model.wte.weight)


def test_a_leftover_old_copy_after_the_swap_is_ignored_then_removed(tmp_path, model_cfg):
    """A crash after the new copy was renamed in, before the old one was deleted."""
    _, path = _save(tmp_path, model_cfg)
    shutil.copytree(path, tmp_path / ".ck.old")
    before = _listing(tmp_path)
    assert checkpoint.resolve(path) == path
    assert checkpoint.load_pt(path, checkpoint.STATE) == {"step": 3}
    assert _listing(tmp_path) == before
    _save(tmp_path, model_cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_files_and_directory_reach_the_disk_before_the_rename(tmp_path, model_cfg, monkeypatch):
    """save fsyncs every file and the new directory before renaming it in, then the parent
    directory (the renames); otherwise a power cut could leave a renamed, empty checkpoint."""
    _save(tmp_path, model_cfg)
    events = []
    fsync, replace = checkpoint._fsync, os.replace
    monkeypatch.setattr(checkpoint, "_fsync", lambda p: events.append(("fsync", p)) or fsync(p))
    monkeypatch.setattr(
        os, "replace", lambda a, b: events.append(("replace", a, b)) or replace(a, b)
    )
    _save(tmp_path, model_cfg)
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    (_, new_dir, _) = events[renames[-1]]  # the last rename moves the new copy in
    synced_before = {e[1] for e in events[: renames[0]] if e[0] == "fsync"}
    assert synced_before == {
        Path(new_dir),
        *(Path(new_dir) / f for f in os.listdir(tmp_path / "ck")),
    }
    assert ("fsync", tmp_path) in events[renames[-1] :]


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
