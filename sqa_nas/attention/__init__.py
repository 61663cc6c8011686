"""The bottom of the house: attention configs, masks, RoPE, the problem a backend is asked,
and the float64 reference. The layer that runs them is `sqa_nas.layer`."""

from sqa_nas.attention.config import AttentionConfig, BlockSparseLayout, Pattern
from sqa_nas.attention.masks import MaskSpec, count_visible, dense_mask, density
from sqa_nas.attention.problem import AttentionProblem

__all__ = [
    "AttentionConfig",
    "AttentionProblem",
    "BlockSparseLayout",
    "MaskSpec",
    "Pattern",
    "count_visible",
    "dense_mask",
    "density",
]
