"""The per-layer choices a search makes, as Optuna stores them, parsed and printed here only.

A mask choice is one of ``"dense"``, ``"window:W"`` (causal sliding window of W tokens),
``"flex:W+G"`` (window W plus G global tokens) or ``"block_sparse"`` (the search space's
block layout); a heads choice is ``"H_q/H_kv"`` (e.g. ``"8/4"``: 8 query heads reading
4 key/value heads). These strings are the values of the ``<unit>.mask`` and ``<unit>.heads``
Optuna parameters, so studies on disk keep them exactly as written.

Torch-free on purpose: the dashboard reads trial records through this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqa_nas.errors import UserError

MaskPattern = Literal["dense", "window", "flex", "block_sparse"]

_MASK = re.compile(r"(?:(dense|block_sparse)|window:([0-9]+)|flex:([0-9]+)\+([0-9]+))")
_HEADS = re.compile(r"([1-9][0-9]*)/([1-9][0-9]*)")


@dataclass(frozen=True)
class MaskChoice:
    """One layer's attention mask: its pattern and, for window / flex, its sizes."""

    pattern: MaskPattern
    window: int | None = None  # window and flex: tokens each query sees behind it
    global_tokens: int | None = None  # flex only: leading tokens every query sees

    def __post_init__(self) -> None:
        windowed = self.pattern in ("window", "flex")
        if windowed != (self.window is not None) or (
            (self.pattern == "flex") != (self.global_tokens is not None)
        ):
            raise UserError(
                f"mask {self.pattern!r} takes "
                + {
                    "dense": "no sizes",
                    "block_sparse": "no sizes",
                    "window": "a window only",
                    "flex": "a window and global tokens",
                }[self.pattern]
                + f", not window={self.window}, global_tokens={self.global_tokens}"
            )

    @classmethod
    def of(
        cls, pattern: MaskPattern, *, window: int | None = None, global_tokens: int | None = None
    ) -> MaskChoice:
        """The choice for `pattern`, taking from `window` / `global_tokens` what it needs."""
        return cls(
            pattern,
            window if pattern in ("window", "flex") else None,
            global_tokens if pattern == "flex" else None,
        )

    @classmethod
    def parse(cls, text: Any) -> MaskChoice:
        """``"dense"``, ``"window:W"``, ``"flex:W+G"`` or ``"block_sparse"``; anything else
        is a `UserError` naming the allowed forms."""
        m = _MASK.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise UserError(
                f"mask {text!r} is not a mask choice: expected 'dense', "
                "'window:W', 'flex:W+G' or 'block_sparse' (W, G whole numbers)"
            )
        named, window, flex_window, global_tokens = m.groups()
        if named:
            return cls(cast(MaskPattern, named))  # _MASK admits "dense" or "block_sparse"
        if window is not None:
            return cls("window", int(window))
        return cls("flex", int(flex_window), int(global_tokens))

    @classmethod
    def of_layer(cls, layer: Mapping[str, Any]) -> MaskChoice:
        """The mask of a per-layer record (``window``, ``global_tokens``, ``block_sparse``
        or ``pattern`` keys, as `sqa_nas.model.layer_dict` writes them)."""
        if layer.get("block_sparse") or layer.get("pattern") == "block_sparse":
            return cls("block_sparse")
        if layer.get("window") is not None:
            g = layer.get("global_tokens")
            return cls("flex", layer["window"], g) if g else cls("window", layer["window"])
        return cls("dense")

    def __str__(self) -> str:
        if self.pattern == "window":
            return f"window:{self.window}"
        if self.pattern == "flex":
            return f"flex:{self.window}+{self.global_tokens}"
        return self.pattern

    def layer_fields(self, block_sparse: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `AttentionConfig` fields this mask sets; `block_sparse` is the layout (a
        `BlockSparseLayout` dump) a block-sparse choice uses."""
        if self.pattern == "block_sparse":
            if block_sparse is None:
                raise UserError("mask 'block_sparse' needs a block layout")
            return {"block_sparse": block_sparse}
        if self.pattern == "window":
            return {"window": self.window}
        if self.pattern == "flex":
            return {"window": self.window, "global_tokens": self.global_tokens}
        return {}

    def short(self) -> str:
        """The compact form allocations use: '' (dense), 'w64', 'w64+g4', 'bs'."""
        if self.pattern == "block_sparse":
            return "bs"
        if self.pattern == "window":
            return f"w{self.window}"
        if self.pattern == "flex":
            return f"w{self.window}+g{self.global_tokens}"
        return ""


@dataclass(frozen=True)
class HeadsChoice:
    """One layer's head counts: `n_q` query heads over `n_kv` key/value heads."""

    n_q: int
    n_kv: int

    @classmethod
    def parse(cls, text: Any) -> HeadsChoice:
        """``"H_q/H_kv"`` with positive whole numbers, e.g. ``"8/4"``; else a `UserError`."""
        m = _HEADS.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise UserError(
                f"heads {text!r} is not a heads choice: expected 'H_q/H_kv' with "
                "positive whole numbers, e.g. '8/4'"
            )
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.n_q}/{self.n_kv}"


def compact_allocation(layers: list[dict[str, Any]]) -> str:
    """'8/4 x2, 4/4 w64 x2': each layer as H_q/H_kv plus its mask (`MaskChoice.short`),
    runs collapsed; `layers` as `sqa_nas.model.layer_dict` writes them."""
    tokens = [_layer_token(x) for x in layers]
    runs: list[list] = []
    for tok in tokens:
        if runs and runs[-1][0] == tok:
            runs[-1][1] += 1
        else:
            runs.append([tok, 1])
    if all(count == 1 for _, count in runs):
        return " ".join(tok for tok, _ in runs)
    return ", ".join(tok if count == 1 else f"{tok} x{count}" for tok, count in runs)


def _layer_token(layer: dict[str, Any]) -> str:
    heads = HeadsChoice(layer["n_q_heads"], layer["n_kv_heads"])
    mask = MaskChoice.of_layer(layer).short()
    return f"{heads} {mask}" if mask else str(heads)
