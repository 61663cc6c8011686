"""sqa_nas.search.choices: the mask and heads strings Optuna stores, parsed and printed in one
place; bad strings refused with a UserError naming the allowed forms."""

from __future__ import annotations

import random

import pytest

from sqa_nas.errors import UserError
from sqa_nas.search.choices import HeadsChoice, MaskChoice
from sqa_nas.search.space import parse_space

MASKS = [
    ("dense", MaskChoice("dense")),
    ("block_sparse", MaskChoice("block_sparse")),
    ("window:0", MaskChoice("window", 0)),
    ("window:64", MaskChoice("window", 64)),
    ("flex:16+4", MaskChoice("flex", 16, 4)),
    ("flex:128+1", MaskChoice("flex", 128, 1)),
]


@pytest.mark.parametrize("text,choice", MASKS, ids=[t for t, _ in MASKS])
def test_a_mask_string_parses_and_prints_back(text, choice):
    assert MaskChoice.parse(text) == choice
    assert str(choice) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Dense",
        "window",
        "window:",
        "window:-4",
        "window:4.5",
        "window:4+2",
        "flex:16",
        "flex:16+",
        "flex:+4",
        "sliding:8",
        "dense\n",
        "window:\u0663",
        " dense",
        "dense ",
        "block-sparse",
        64,
        None,
    ],
)
def test_a_bad_mask_string_is_refused_naming_the_forms(text):
    with pytest.raises(
        UserError,
        match=r"is not a mask choice: expected 'dense', 'window:W', "
        r"'flex:W\+G' or 'block_sparse'",
    ):
        MaskChoice.parse(text)


def test_a_mask_refuses_sizes_its_pattern_does_not_take():
    for bad in (
        lambda: MaskChoice("window"),
        lambda: MaskChoice("dense", 4),
        lambda: MaskChoice("flex", 4),
        lambda: MaskChoice("window", 4, 2),
    ):
        with pytest.raises(UserError, match="takes"):
            bad()
    assert MaskChoice.of("window", window=8, global_tokens=2) == MaskChoice("window", 8)
    assert MaskChoice.of("dense", window=8, global_tokens=2) == MaskChoice("dense")


def test_a_mask_gives_its_layer_fields_and_is_read_back_from_them():
    layout = {
        "block_size": 16,
        "local_blocks": 1,
        "global_blocks": 1,
        "random_blocks": 0,
        "seed": 0,
    }
    for text, fields in [
        ("dense", {}),
        ("window:8", {"window": 8}),
        ("flex:8+2", {"window": 8, "global_tokens": 2}),
        ("block_sparse", {"block_sparse": layout}),
    ]:
        mask = MaskChoice.parse(text)
        assert mask.layer_fields(layout) == fields
        assert MaskChoice.of_layer({"n_q_heads": 4, "n_kv_heads": 4, **fields}) == mask
    with pytest.raises(UserError, match="needs a block layout"):
        MaskChoice("block_sparse").layer_fields()


@pytest.mark.parametrize("text,pair", [("8/4", (8, 4)), ("1/16", (1, 16)), ("12/3", (12, 3))])
def test_a_heads_string_parses_and_prints_back(text, pair):
    assert HeadsChoice.parse(text) == HeadsChoice(*pair)
    assert str(HeadsChoice(*pair)) == text


@pytest.mark.parametrize(
    "text", ["8", "8/", "/4", "0/4", "8/0", "8:4", "8/4/2", "-8/4", "H/2", " 8/4", 8]
)
def test_a_bad_heads_string_is_refused(text):
    with pytest.raises(UserError, match=r"is not a heads choice: expected 'H_q/H_kv'"):
        HeadsChoice.parse(text)


def test_every_choice_a_space_offers_parses_and_builds_that_layer():
    spec = parse_space(
        {
            "model": {"n_layers": 2, "seq_len": 64},
            "search": {
                "patterns": ["dense", "window", "flex", "block_sparse"],
                "windows": [8, 16],
                "global_tokens": [2, 4],
                "allow_reverse": True,
            },
        }
    )
    masks = [MaskChoice.parse(m) for m in spec.mask_choices()]
    assert [str(m) for m in masks] == spec.mask_choices()  # printed as they were offered
    assert {m.pattern for m in masks} == {"dense", "window", "flex", "block_sparse"}
    rnd = random.Random(0)
    for _ in range(20):
        heads = rnd.choice(spec.head_choices())
        mask = rnd.choice(spec.mask_choices())
        params = {
            "layer0.heads": heads,
            "layer0.mask": mask,
            "layer1.heads": spec.head_choices()[0],
            "layer1.mask": "dense",
        }
        c = spec.build_config(params, 256).layer_configs[0]
        assert str(HeadsChoice(c.n_q_heads, c.n_kv_heads)) == heads
        assert MaskChoice.of_layer(
            {"window": c.window, "global_tokens": c.global_tokens, "block_sparse": c.block_sparse}
        ) == MaskChoice.parse(mask)
