"""The ablation spec: axes expand into named variants, budgets become steps or seconds, and every
mistake is one ConfigError naming the variant and the field, before anything runs."""

import math

import pytest

from gptlab.ablate.spec import (
    STEP_CAP,
    expand_axes,
    load_spec,
    parse_spec,
    plan,
    tokens_per_step,
    train_flops_per_step,
)
from gptlab.errors import ConfigError


def _spec(**kw):
    return {"name": "t", "base": {"preset": "tiny"}, "variants": {"a": {}, "b": {}}} | kw


def test_axes_expand_into_the_product_named_by_values():
    named = expand_axes({"model.pos_emb": ["learned", "rope"], "optim.name": ["adamw", "muon"]})
    assert [n for n, _ in named] == ["learned-adamw", "learned-muon", "rope-adamw", "rope-muon"]
    assert named[3][1] == {"model.pos_emb": "rope", "optim.name": "muon"}
    named = expand_axes({"model.qk_norm": [False, True], "model.n_layer": [2], "optim.lr": [0.01]})
    assert [n for n, _ in named] == ["no_qk_norm-n_layer=2-lr=0.01", "qk_norm-n_layer=2-lr=0.01"]


def test_axes_and_variants_resolve_into_configs():
    spec = parse_spec(
        {
            "name": "pxo",
            "base": {"preset": "tiny", "overrides": {"train.eval_interval": 5}},
            "axes": {"model.pos_emb": ["learned", "rope"]},
            "variants": {"qk": {"model.qk_norm": True, "optim": {"lr": 0.01}}},
            "seeds": [1, 2],
            "budget": {"steps": 12},
            "baseline": "learned",
        }
    )
    assert [v.name for v in spec.variants] == ["learned", "rope", "qk"]
    assert spec.variant("rope").config.model.pos_emb == "rope"
    qk = spec.variant("qk").config
    assert qk.model.qk_norm and qk.optim.lr == 0.01 and qk.train.eval_interval == 5
    assert all(v.config.train.max_steps == 12 for v in spec.variants)
    runs = plan(spec, __import__("pathlib").Path("out"))
    assert [(r.variant, r.seed) for r in runs][:3] == [("learned", 1), ("learned", 2), ("rope", 1)]
    assert runs[1].config.train.seed == 2 and runs[1].config.train.out_dir == str(runs[1].run_dir)
    assert str(runs[1].run_dir) == "out/runs/learned/seed2"


def test_budgets_convert_with_each_variants_own_shape():
    spec = parse_spec(
        _spec(variants={"a": {}, "wide": {"model.n_embd": 64}}, budget={"tokens": 1e4})
    )
    for v in spec.variants:
        assert v.config.train.max_steps == math.ceil(1e4 / tokens_per_step(v.config))
    spec = parse_spec(
        _spec(variants={"a": {}, "wide": {"model.n_embd": 64}}, budget={"flops": 1e11})
    )
    a, wide = (v.config for v in spec.variants)
    assert a.train.max_steps == math.ceil(1e11 / train_flops_per_step(a))
    assert wide.train.max_steps < a.train.max_steps  # equal compute: the bigger model, fewer steps
    spec = parse_spec(_spec(budget={"wall_seconds": 30}))
    tc = spec.variants[0].config.train
    assert tc.max_seconds == 30.0 and tc.max_steps == STEP_CAP


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown field 'colour'"),
        (
            {"variants": {"a": {"model.n_layerz": 2}}},
            "variant a: unknown config field 'model.n_layerz'",
        ),
        ({"variants": {"a": {"optim.lr": "fast"}}}, "variant a: optim.lr must be a number"),
        ({"variants": {"a": {"model.n_head": 3}}}, "variant a: .*n_head"),
        (
            {"axes": {"optim.name": ["adamw"]}, "variants": {"adamw": {}}},
            "variant adamw: the name is used twice",
        ),
        ({"axes": {"optim.name": []}}, "axes.optim.name is empty"),
        ({"baseline": "c"}, "baseline 'c' is not a variant; choose one of a, b"),
        ({"budget": {"steps": 0}}, "budget.steps must be a positive number"),
        ({"budget": {"wall_seconds": -5}}, "budget.wall_seconds must be a positive number"),
        ({"budget": {"hours": 1}}, "unknown budget 'hours'"),
        ({"budget": {"steps": 10, "tokens": 5}}, "budget must be one of"),
        ({"metric": "eval/hellaswag/acc_norm"}, "variant a: metric .*train.eval_tasks"),
        ({"metric": "val_accuracy"}, "variant a: metric 'val_accuracy': training logs no"),
        ({"metric": "time_to:val_loss=1.9"}, "time_to:METRIC<=X"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"seeds": [1, 1]}, "seeds lists a seed twice"),
        ({"variants": {}}, "no variants"),
        ({"variants": {"a/b": {}}}, "variant 'a/b': a name must be"),
        ({"base": {"preset": "nope"}}, "unknown preset 'nope'"),
    ],
)
def test_bad_specs_are_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_spec(_spec(**change))
    assert "\n" not in str(e.value)


def test_metrics_training_logs_are_accepted():
    over = {"train.eval_tasks": "hellaswag"}
    parse_spec(_spec(base={"preset": "tiny", "overrides": over}, metric="eval/hellaswag/acc_norm"))
    parse_spec(_spec(metric="time_to:val_loss<=1.9"))
    parse_spec(_spec(metric="val_loss"))
    with pytest.raises(ConfigError, match="hellaswag logs acc, acc_norm, not 'f1'"):
        parse_spec(_spec(base={"preset": "tiny", "overrides": over}, metric="eval/hellaswag/f1"))


def test_spec_file_is_read(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbase: {preset: tiny}\naxes: {optim.name: [adamw, muon]}\n")
    spec = load_spec(path)
    assert [v.name for v in spec.variants] == ["adamw", "muon"] and spec.baseline == "adamw"
    with pytest.raises(ConfigError, match="must be a .yaml"):
        load_spec(tmp_path / "s.txt")


def test_shipped_example_spec_is_valid():
    root = __import__("pathlib").Path(__file__).parents[2]
    spec = load_spec(root / "examples" / "ablations" / "positions_x_optimizer.yaml")
    assert len(spec.variants) * len(spec.seeds) == 12 and spec.baseline == "learned-adamw"
