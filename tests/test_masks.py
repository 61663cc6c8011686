"""Masks: the library's masks equal their definitions; analytic counts equal dense counts."""

from __future__ import annotations

import random

import pytest
import torch

from sqa_nas.attention import BlockSparseLayout, MaskSpec, count_visible, dense_mask, density
from sqa_nas.attention.masks import block_layout
from tests.reference import mask_from_definition


def _random_specs(count=60, seed=0):
    rnd = random.Random(seed)
    for _ in range(count):
        causal = rnd.random() < 0.5
        kind = rnd.choice(["dense", "window", "flex", "block"])
        if kind == "dense":
            yield MaskSpec(causal)
        elif kind == "window":
            yield MaskSpec(causal, window=rnd.randint(0, 40))
        elif kind == "flex":
            yield MaskSpec(causal, window=rnd.randint(0, 40), global_tokens=rnd.randint(1, 20))
        else:
            yield MaskSpec(causal, block_sparse=BlockSparseLayout(
                block_size=rnd.choice([1, 7, 16, 64]), local_blocks=rnd.randint(0, 2),
                global_blocks=rnd.randint(0, 2), random_blocks=rnd.randint(0, 3),
                seed=rnd.randint(0, 99)))


@pytest.mark.parametrize("n", [1, 2, 33, 100, 257])
def test_dense_mask_matches_definition_and_counts(n):
    for spec in _random_specs():
        expected = mask_from_definition(n, spec.causal, spec.window, spec.global_tokens,
                                        spec.block_sparse)
        got = dense_mask(spec, n)
        if got is None:
            assert spec.is_full and bool(expected.all())
            got = torch.ones(n, n, dtype=torch.bool)
        assert torch.equal(got, expected), spec
        assert count_visible(spec, n) == int(expected.sum()), spec
        assert got.any(dim=1).all(), "every query must see at least one key"


def test_density_of_window_and_causal():
    n = 4096
    assert density(MaskSpec(False), n) == 1.0
    assert density(MaskSpec(True), n) == pytest.approx((n + 1) / (2 * n))
    # Causal window w: each query sees min(i, w) + 1 keys.
    w = 128
    assert count_visible(MaskSpec(True, window=w), n) == sum(min(i, w) + 1 for i in range(n))


def test_count_visible_scales_to_a_million_tokens():
    spec = MaskSpec(True, window=4096, global_tokens=16)
    n = 1 << 20
    total = count_visible(spec, n)
    assert 4096 * n < total < 4114 * n


def test_block_layout_is_deterministic_and_seeded():
    layout = BlockSparseLayout(block_size=8, local_blocks=0, global_blocks=0, random_blocks=3,
                               seed=5)
    a, b = block_layout(layout, 256, False), block_layout(layout, 256, False)
    assert torch.equal(a, b)
    other = block_layout(layout.model_copy(update={"seed": 6}), 256, False)
    assert not torch.equal(a, other)
    causal = block_layout(layout, 256, True)
    assert not torch.triu(causal & ~torch.eye(32, dtype=torch.bool), 1).any(), \
        "causal random blocks must lie at or left of the diagonal"
