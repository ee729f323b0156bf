import dataclasses
import json

import pytest

from gptlab.config import from_dict, load_file, merge, to_dict
from gptlab.errors import ConfigError, GptlabError
from gptlab.model.config import ModelConfig
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
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        get_preset("nope")


def test_config_error_is_a_value_error_and_a_gptlab_error():
    """Library callers that catch ValueError around from_dict keep working; the CLI tells it
    apart from a stray ValueError (a bug) by its class."""
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, GptlabError)


def test_builders_turn_validation_errors_into_config_errors():
    with pytest.raises(ValueError) as direct:  # the dataclass itself: plain ValueError
        ModelConfig(n_embd=32, n_head=5)
    assert type(direct.value) is ValueError
    with pytest.raises(ConfigError, match="not divisible by model.n_head 5"):
        from_dict(ModelConfig, {"n_embd": 32, "n_head": 5})
    with pytest.raises(ConfigError, match="exceeds train.max_steps"):
        merge(get_preset("tiny"), {"optim": {"warmup_steps": 10**6}})
    with pytest.raises(ConfigError, match="unknown config field 'model.n_layers'; did you mean"):
        merge(RunConfig(), {"model": {"n_layers": 3}})
    with pytest.raises(ConfigError, match="unknown config field '7'"):
        from_dict(ModelConfig, {7: 1, "bogus": 2})  # YAML keys need not be strings


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("c.yaml", "model:\n  n_layer: [3\n", r"config file .*c\.yaml, line 3, column 1: "),
        ("c.yml", "a: b: c\n", r"c\.yml, line 1, column 5: mapping values are not allowed"),
        ("c.json", '{"model": {"n_layer": 3}', r"c\.json, line 1, column 25: Expecting ','"),
        ("c.json", "", r"c\.json, line 1, column 1: Expecting value"),
        ("c.yaml", "3\n", r"must hold a mapping .* at the top level, not a number"),
        ("c.yaml", "--- {}\n--- {}\n", r"line 2, column 1: but found another document \(expected"),
    ],
)
def test_load_file_errors_are_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message) as e:
        load_file(tmp_path / name)
    assert "\n" not in str(e.value)


def test_load_file_of_a_directory_missing_file_and_empty_yaml(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; give a YAML or JSON file"):
        load_file(tmp_path)
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_file(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing to change\n")
    assert load_file(tmp_path / "empty.yaml") == {}
