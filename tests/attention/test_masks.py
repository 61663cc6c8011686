"""Masks: the library's masks equal their definitions (`sqa_nas.attention.reference`, written
without `sqa_nas.attention.masks`); analytic counts equal dense counts; block-sparse layouts
are pinned to a golden literal, so a change in the layout generator fails here."""

from __future__ import annotations

import random

import pytest
import torch

from sqa_nas.attention import BlockSparseLayout, MaskSpec, count_visible, dense_mask, density
from sqa_nas.attention.masks import block_layout
from sqa_nas.attention.reference import reference_block_layout, reference_mask

pytestmark = pytest.mark.usefixtures("seeded")


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
            yield MaskSpec(
                causal,
                block_sparse=BlockSparseLayout(
                    block_size=rnd.choice([1, 7, 16, 64]),
                    local_blocks=rnd.randint(0, 2),
                    global_blocks=rnd.randint(0, 2),
                    random_blocks=rnd.randint(0, 3),
                    seed=rnd.randint(0, 99),
                ),
            )


@pytest.mark.parametrize("n", [1, 2, 33, 100, 257])
def test_dense_mask_matches_definition_and_counts(n):
    for spec in _random_specs():
        expected = reference_mask(spec, n)
        got = dense_mask(spec, n)
        if got is None:
            assert spec.is_full and bool(expected.all())
            got = torch.ones(n, n, dtype=torch.bool)
        assert torch.equal(got, expected), spec
        assert count_visible(spec, n) == int(expected.sum()), spec
        assert got.any(dim=1).all(), "every query must see at least one key"


def test_window_and_global_tokens_by_hand():
    """The definitions themselves, on a few pairs (N = 12, window 3, 2 global tokens)."""
    causal = reference_mask(MaskSpec(True, window=3, global_tokens=2), 12)
    assert causal[9, 6] and not causal[9, 5] and not causal[6, 7]  # 9 sees 6..9
    assert causal[9, 1] and causal[9, 0] and not causal[1, 2]  # globals, still causal
    both = reference_mask(MaskSpec(False, window=3, global_tokens=2), 12)
    assert both[6, 9] and not both[6, 10] and both[1, 11] and both[11, 1]
    assert torch.equal(dense_mask(MaskSpec(True, window=3, global_tokens=2), 12), causal)
    assert torch.equal(dense_mask(MaskSpec(False, window=3, global_tokens=2), 12), both)


# Golden layouts: the visible key blocks of every query block, as the generator gave them
# when this test was written (torch.Generator seeded, `BlockSparseLayout`'s draw formula).
GOLDEN = [
    (
        BlockSparseLayout(block_size=16, local_blocks=0, global_blocks=0, random_blocks=3, seed=5),
        150,
        False,
        [
            [0, 1, 8, 9],
            [1, 8, 9],
            [0, 1, 2, 7],
            [3, 5, 6, 9],
            [0, 4, 6, 7],
            [5, 6, 9],
            [0, 6, 9],
            [0, 2, 7],
            [0, 5, 8, 9],
            [2, 3, 6, 9],
        ],
    ),
    (
        BlockSparseLayout(block_size=16, local_blocks=1, global_blocks=1, random_blocks=2, seed=3),
        130,
        True,
        [
            [0, 1, 2, 3, 4, 5, 6, 7, 8],
            [0, 1, 2],
            [0, 1, 2, 3],
            [0, 2, 3, 4],
            [0, 2, 3, 4, 5],
            [0, 2, 4, 5, 6],
            [0, 1, 2, 5, 6, 7],
            [0, 3, 6, 7, 8],
            [0, 1, 7, 8],
        ],
    ),
]


@pytest.mark.parametrize("layout,n,causal,rows", GOLDEN, ids=["random-only", "bigbird-causal"])
def test_block_layout_equals_the_golden_literal(layout, n, causal, rows):
    expected = torch.zeros(len(rows), len(rows), dtype=torch.bool)
    for r, cols in enumerate(rows):
        expected[r, cols] = True
    assert torch.equal(block_layout(layout, n, causal), expected)
    assert torch.equal(reference_block_layout(layout, n, causal), expected)
    # The token mask follows the layout: block (r, c) visible <=> its tokens are (causal cut).
    mask = dense_mask(MaskSpec(causal, block_sparse=layout), n)
    assert bool(mask[16 * 3 + 5, 16 * 1 + 2]) == (1 in rows[3])
    assert bool(mask[16 * 3 + 5, 16 * 6]) == (6 in rows[3] and not causal)


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
    # Query i sees min(i, 4096) + 1 band keys plus the globals left of its band.
    expected = sum(min(i, 4096) + 1 + min(max(i - 4096, 0), 16) for i in range(n))
    assert count_visible(spec, n) == expected


def test_block_layout_is_deterministic_and_seeded():
    layout = BlockSparseLayout(
        block_size=8, local_blocks=0, global_blocks=0, random_blocks=3, seed=5
    )
    a, b = block_layout(layout, 256, False), block_layout(layout, 256, False)
    assert torch.equal(a, b)
    other = block_layout(layout.model_copy(update={"seed": 6}), 256, False)
    assert not torch.equal(a, other)
    causal = block_layout(layout, 256, True)
    assert not torch.triu(causal & ~torch.eye(32, dtype=torch.bool), 1).any(), (
        "causal random blocks must lie at or left of the diagonal"
    )
