import dataclasses
import json

import pytest

from gptlab.config import from_dict, load_file, merge, to_dict
from gptlab.presets import PRESETS, get_preset
from gptlab.train.config import RunConfig


def test_round_trip_every_preset():
    for name in PRESETS:
        cfg = get_preset(name)
        assert from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_shakespeare_char_is_nanogpts_recipe():
    m = get_preset("shakespeare_char").model
    assert (m.n_layer, m.n_head, m.n_embd, m.seq_len, m.dropout) == (6, 6, 384, 256, 0.2)


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="unknown config field 'model.n_layers'"):
        merge(RunConfig(), {"model": {"n_layers": 3}})


def test_type_errors_name_the_field():
    with pytest.raises(ValueError, match="model.n_layer must be an integer"):
        merge(RunConfig(), {"model": {"n_layer": "four"}})
    with pytest.raises(ValueError, match="train.dtype='half' is not one of"):
        merge(RunConfig(), {"train": {"dtype": "half"}})


def test_merge_and_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_layer: 3\noptim:\n  lr: 0.002\n")
    cfg = merge(get_preset("tiny"), load_file(path))
    assert cfg.model.n_layer == 3 and cfg.optim.lr == 0.002
    assert cfg.model.n_embd == get_preset("tiny").model.n_embd  # untouched fields stay


def test_cross_section_validation():
    cfg = RunConfig()
    with pytest.raises(ValueError, match="warmup_steps"):
        dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, warmup_steps=10**6))


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")
