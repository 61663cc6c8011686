"""AttentionConfig refuses every invalid combination with a message naming the field."""

from __future__ import annotations

import pytest

from sqa_nas.attention import AttentionConfig, BlockSparseLayout

BASE = dict(d_model=256, n_heads=16, n_q_heads=8, n_kv_heads=4)


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (dict(n_kv_heads=3), r"n_kv_heads=3 does not divide n_q_heads=8.*\[1, 2, 4, 8\]"),
        (dict(n_q_heads=4, n_kv_heads=6), r"n_q_heads=4 does not divide n_kv_heads=6"),
        (dict(n_heads=7), r"n_heads=7 does not divide d_model=256"),
        (dict(n_q_heads=17), r"n_q_heads=17 exceeds n_heads=16"),
        (dict(n_q_heads=0), r"n_q_heads"),
        (dict(head_dim=0), r"head_dim"),
        (dict(head_dim=-8), r"head_dim"),
        (dict(window=-1), r"window"),
        (dict(global_tokens=4), r"global_tokens=4 needs a window"),
        (dict(global_tokens=-1, window=3), r"global_tokens"),
        (dict(window=8, block_sparse=BlockSparseLayout()), r"block_sparse cannot be combined"),
        (dict(rope_theta=0.0), r"rope_theta"),
        (dict(head_dim=15, rope_theta=10000.0), r"rope_theta needs an even head_dim"),
        (dict(n_q_heads="8"), r"n_q_heads"),
        (dict(backend=""), r"backend"),
        (dict(unknown=1), r"unknown"),
    ],
)
def test_invalid_combinations_raise_value_error(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        AttentionConfig(**{**BASE, **overrides})


def test_defaults_and_derived_fields():
    c = AttentionConfig(**BASE)
    assert c.head_dim == 16 and c.attn_heads == 8 and not c.is_reverse
    assert c.pattern == "dense" and c.causal and c.backend == "auto"
    r = AttentionConfig(**{**BASE, "n_q_heads": 2, "n_kv_heads": 8})
    assert r.is_reverse and r.attn_heads == 8
    assert AttentionConfig(**BASE, window=4).pattern == "window"
    assert AttentionConfig(**BASE, window=4, global_tokens=2).pattern == "flex"
    assert AttentionConfig(**BASE, block_sparse=BlockSparseLayout()).pattern == "block_sparse"
    # An explicit head_dim may differ from d_model // n_heads.
    assert (
        AttentionConfig(d_model=100, n_heads=16, n_q_heads=4, n_kv_heads=4, head_dim=40).head_dim
        == 40
    )


def test_config_is_immutable():
    c = AttentionConfig(**BASE)
    with pytest.raises(ValueError):
        c.n_q_heads = 4
