"""sqa_nas.search.space (and the samplers and cost range built on it): the rules that decide
which architectures a search can draw and which it refuses, written out by hand: constraint
values at and over their limits, the head pairs and mask strings offered and their order,
seed variants' own choices, parameter names, defaults, bounds, and what the space hash
covers."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import optuna
import pytest

from sqa_nas.analytics import analyze
from sqa_nas.errors import UserError
from sqa_nas.search.choices import MaskChoice
from sqa_nas.search.costs import cost_range
from sqa_nas.search.samplers import make_sampler
from sqa_nas.search.space import Constraints, parse_space

MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 8, "ffn_dim": 96, "seq_len": 64}


def _space(search=None, **sections):
    return parse_space(
        {
            "model": sections.pop("model", MODEL),
            "search": search or {},
            "seed_trials": sections.pop("seed_trials", []),
            **sections,
        }
    )


# ------------------------------------------------------------------------ constraints
COST = SimpleNamespace(kv_bytes=50, params=1000, attn_flops=30.0)
MHA = SimpleNamespace(kv_bytes=100, params=1200, attn_flops=60.0)


def test_a_cost_exactly_at_its_limit_is_feasible():
    limits = Constraints(
        max_kv_cache_bytes=50,
        max_kv_cache_vs_mha=0.5,
        max_params=1000,
        max_attention_flops=30,
        max_attention_flops_vs_mha=0.5,
    )
    assert limits.violations(COST, MHA) == []
    assert limits.values(COST, MHA) == {
        k: 0.0
        for k in (
            "max_kv_cache_bytes",
            "max_kv_cache_vs_mha",
            "max_params",
            "max_attention_flops",
            "max_attention_flops_vs_mha",
        )
    }


def test_costs_over_their_limits_are_named_with_values_relative_to_the_limit():
    limits = Constraints(
        max_kv_cache_vs_mha=0.4,
        max_attention_flops=20,
        max_attention_flops_vs_mha=0.25,
        max_params=2000,
    )
    assert limits.violations(COST, MHA) == [
        "max_kv_cache_vs_mha: 0.5 > 0.4",
        "max_attention_flops: 30 > 20",
        "max_attention_flops_vs_mha: 0.5 > 0.25",
    ]
    assert limits.values(COST, MHA) == pytest.approx(
        {
            "max_kv_cache_vs_mha": 0.5 / 0.4 - 1,
            "max_attention_flops": 30 / 20 - 1,
            "max_attention_flops_vs_mha": 1.0,
            "max_params": 1000 / 2000 - 1,
        }
    )


# ------------------------------------------------------------------------ head pairs
def test_head_pairs_include_equal_counts_and_run_from_most_heads_down():
    spec = _space({"n_q_heads": ["H", "H/2"], "n_kv_heads": [1, "H/2"]})
    assert spec.head_choices() == ["8/4", "8/1", "4/4", "4/1"]


def test_reverse_pairs_need_whole_multiples():
    model = {**MODEL, "d_model": 48, "n_heads": 6}
    assert _space(
        {"n_q_heads": [2], "n_kv_heads": [6, 3], "allow_reverse": True}, model=model
    ).head_choices() == ["2/6"]
    with pytest.raises(UserError, match="no valid"):
        _space({"n_q_heads": [2], "n_kv_heads": [3], "allow_reverse": True}, model=model)


def test_seed_variants_bring_their_own_heads_and_masks():
    # SW-SQA: H/2 query heads over H/4 with a window; without searched windows it takes
    # seq_len // 4. Flex-SQA takes the first searched window and global-token count.
    spec = _space({"n_q_heads": ["H"], "n_kv_heads": ["H"]}, seed_trials=["SW-SQA"])
    assert spec.head_choices() == ["8/8", "4/2"]
    assert spec.mask_choices() == ["dense", "window:16"]
    flex = _space(
        {
            "n_q_heads": ["H"],
            "n_kv_heads": ["H"],
            "patterns": ["window"],
            "windows": [8, 32],
            "global_tokens": [2, 4],
        },
        seed_trials=["Flex-SQA"],
    )
    assert flex.mask_choices() == ["window:8", "window:32", "flex:8+2"]
    assert dict(flex.seed_params())["Flex-SQA"] == {
        "layer0.heads": "4/4",
        "layer0.mask": "flex:8+2",
        "layer1.heads": "4/4",
        "layer1.mask": "flex:8+2",
    }


# ------------------------------------------------------------------------ masks
def test_mask_choices_in_order_each_once():
    spec = _space(
        {
            "patterns": ["dense", "window", "flex", "block_sparse"],
            "windows": [8, 16],
            "global_tokens": [2, 4],
        }
    )
    assert spec.mask_choices() == [
        "dense",
        "window:8",
        "window:16",
        "flex:8+2",
        "flex:8+4",
        "flex:16+2",
        "flex:16+4",
        "block_sparse",
    ]


def test_block_sparse_defaults_to_blocks_of_an_eighth_of_the_sequence():
    spec = _space({"patterns": ["block_sparse"]}, model={**MODEL, "seq_len": 256})
    config = spec.build_config({"layer0.heads": "8/8", "layer1.heads": "8/8"}, 256)
    assert [c.block_sparse.block_size for c in config.layer_configs] == [32, 32]


def test_window_and_block_bounds_at_the_sequence_length():
    with pytest.raises(UserError, match="search.windows: 64 is not below model.seq_len=64"):
        _space({"patterns": ["window"], "windows": [64]})
    spec = _space({"patterns": ["block_sparse"], "block_sparse": {"block_size": 64}})
    assert spec.search.block_sparse.block_size == 64


def test_group_size_without_group_tying_is_refused():
    with pytest.raises(UserError, match="group_size: only used with tying 'groups'"):
        _space({"group_size": 2})


# ------------------------------------------------------------------------ parameters
def test_parameters_exist_only_for_what_is_searched():
    plain = _space()
    assert set(plain.distributions()) == {"layer0.heads", "layer1.heads"}
    both = _space(
        {"patterns": ["dense", "window"], "windows": [8], "backends": ["flex", "sdpa"]},
        model={**MODEL, "searched": {"ffn_dim": [96, 128]}},
        seed_trials=["MHA"],
    )
    assert set(both.distributions()) == {"model.ffn_dim"} | {
        f"layer{i}.{k}" for i in (0, 1) for k in ("heads", "mask", "backend")
    }
    assert dict(both.seed_params())["MHA"] == {
        "model.ffn_dim": 96,
        "layer0.heads": "8/8",
        "layer0.mask": "dense",
        "layer0.backend": "flex",
        "layer1.heads": "8/8",
        "layer1.mask": "dense",
        "layer1.backend": "flex",
    }
    params = {
        "model.ffn_dim": 128,
        "layer0.heads": "8/8",
        "layer0.mask": "window:8",
        "layer0.backend": "sdpa",
        "layer1.heads": "8/2",
        "layer1.mask": "dense",
        "layer1.backend": "flex",
    }
    config = both.build_config(params, 256)
    assert config.ffn_dim == 128
    assert [(c.n_q_heads, c.n_kv_heads, c.window, c.backend) for c in config.layer_configs] == [
        (8, 8, 8, "sdpa"),
        (8, 2, None, "flex"),
    ]


def test_the_vocabulary_is_the_models_when_set_else_the_datas():
    params = {"layer0.heads": "8/8", "layer1.heads": "8/8"}
    assert _space().build_config(params, 300).vocab_size == 300
    assert _space(model={**MODEL, "vocab_size": 100}).build_config(params, 300).vocab_size == 100


def test_a_time_or_token_budget_sets_no_step_budget():
    assert _space(budget={"train": {"seconds": 10}}).budget.train.steps is None
    assert _space(budget={"train": {"tokens": 10}}).budget.train.steps is None
    assert _space().budget.train.steps == 50


def test_the_space_hash_covers_what_makes_trials_comparable_only():
    base = _space()
    same = _space(budget={"n_trials": 99}, storage="sqlite:///x.db", sampler={"seed": 5})
    assert base.space_hash() == same.space_hash()
    for other in (
        _space(constraints={"max_params": 10}),
        _space(objectives=["val_loss"]),
        _space(budget={"train": {"lr": 0.01}}),
    ):
        assert other.space_hash() != base.space_hash()


# ------------------------------------------------------------------------ samplers
def test_the_default_sampler_follows_the_number_of_objectives():
    two = make_sampler(_space(sampler={"population": 12}))
    assert isinstance(two, optuna.samplers.NSGAIISampler) and two._population_size == 12
    assert isinstance(make_sampler(_space(objectives=["val_loss"])), optuna.samplers.TPESampler)


# ------------------------------------------------------------------------ cost range
def test_the_cost_range_is_the_least_and_most_over_every_architecture():
    spec = _space(
        {
            "n_q_heads": ["H", "H/2"],
            "n_kv_heads": ["H/2", 1],
            "patterns": ["dense", "window"],
            "windows": [8],
        },
        seed_trials=["MHA"],
    )
    dists = spec.distributions()
    costs = [
        analyze(spec.build_config(dict(zip(dists, combo)), 256), 64)
        for combo in itertools.product(*(d.choices for d in dists.values()))
    ]
    lo, hi = cost_range(spec)
    for key in ("params", "attn_flops", "kv_bytes"):
        values = [getattr(c, key) for c in costs]
        assert (lo[key], hi[key]) == (pytest.approx(min(values)), pytest.approx(max(values)))
    assert MaskChoice.parse(dists["layer0.mask"].choices[1]).window == 8


def test_a_zero_token_window_is_read_back_as_a_window():
    assert MaskChoice.of_layer({"n_q_heads": 4, "n_kv_heads": 4, "window": 0}) == MaskChoice(
        "window", 0
    )
    assert MaskChoice.of_layer({"window": 8, "global_tokens": 0}) == MaskChoice("window", 8)
