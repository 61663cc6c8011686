"""The Sparse Query Attention layer, its config and its masks."""

from sqa_nas.attention.config import AttentionConfig, BlockSparseLayout
from sqa_nas.attention.layer import SparseQueryAttention
from sqa_nas.attention.masks import MaskSpec, count_visible, dense_mask, density

__all__ = ["AttentionConfig", "BlockSparseLayout", "MaskSpec", "SparseQueryAttention",
           "count_visible", "dense_mask", "density"]
