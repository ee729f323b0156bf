"""Scaling spec validation: one line naming the field for each mistake; the plan it makes."""

import pytest

from gptlab.errors import ConfigError
from gptlab.scale.spec import load_spec, parse_spec
from gptlab.scale.sweep import plan, plan_table

GOOD = {
    "name": "tiny",
    "base": {"preset": "tiny", "overrides": {"train.eval_steps": 1, "model.seq_len": 16}},
    "auto": {"aspect_ratio": 16, "head_dim": 8, "ref_depth": 1},
    "depths": [1, 2],
    "holdout": 3,
    "param_data_ratios": [2, 6],
    "seeds": [1],
}


def bad(**changes):
    raw = {**GOOD, **changes}
    return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (bad(depth=[1]), "unknown spec field 'depth'; did you mean 'depths'"),
        (bad(depths=[]), "depths must be a non-empty list"),
        (bad(depths=[2]), "at least 2 sizes"),
        (bad(depths=[1, 1]), "lists a value twice"),
        (bad(holdout=2), "holdout 2 must be larger"),
        (bad(holdout=None), "holdout must be one depth"),
        (bad(param_data_ratios=[0, 4]), "param_data_ratios must be a list of numbers > 0"),
        (bad(param_data_ratios=[4]), "one param_data_ratio with points: final"),
        (bad(metric="acc"), "metric 'acc' must be one of"),
        (bad(points="some"), "points 'some' must be final or evals"),
        (bad(auto={"depth": 3}), "auto.depth is set by the sweep"),
        (bad(auto={"aspect": 3}), "unknown config field 'auto.aspect'"),
        (bad(base={"preset": "nope"}), "unknown preset 'nope'"),
        (bad(base={"preset": "tiny", "overrides": {"train.max_stepz": 3}}), "base.overrides"),
        (bad(seeds=[1, "2"]), "seeds must hold integers"),
    ],
)
def test_bad_specs_are_one_line(raw, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_spec(raw)
    assert "\n" not in str(e.value)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("depths: [1, 2]\nholdout: 1\nparam_data_ratios: [1, 2]\n")
    with pytest.raises(ConfigError, match=f"scale spec {path}: holdout 1"):
        load_spec(path)


def test_plan_derives_each_size(tmp_path):
    spec = parse_spec({**GOOD, "dataset": "shakespeare_char", "seeds": [1, 2]})
    runs = plan(spec, tmp_path)
    assert [(r.variant, r.seed) for r in runs][:3] == [("d1-r2", 1), ("d1-r2", 2), ("d1-r6", 1)]
    assert len(runs) == 3 * 2 * 2
    assert [r.holdout for r in runs].count(True) == 4
    d3 = next(r for r in runs if r.depth == 3)
    assert (d3.config.model.n_layer, d3.config.model.n_embd) == (3, 48)
    assert d3.config.train.out_dir == str(tmp_path / "runs" / "d3-r2" / "seed1")
    assert d3.config.data.dataset == "shakespeare_char"
    r2, r6 = (next(r for r in runs if r.depth == 2 and r.ratio == k) for k in (2.0, 6.0))
    assert r6.tokens > 2.5 * r2.tokens  # three times the tokens, up to whole steps
    assert "held out" in plan_table(runs)[-2]
