"""`AttentionConfig`: the immutable description of one Sparse Query Attention layer.

Head counts follow the paper (arXiv 2510.01817, section 3.2):

- ``n_heads`` is the reference head count H of the MHA layer SQA is compared to; it sets
  ``head_dim = d_model // n_heads`` unless ``head_dim`` is given.
- ``n_q_heads`` (H_q) query heads; attention FLOPs scale with H_q, so SQA saves H / H_q.
- ``n_kv_heads`` (H_kv) key/value heads, shared GQA-style: with H_q >= H_kv, query head i
  reads KV head ``i // (H_q // H_kv)`` (``repeat_interleave``). With H_q < H_kv (rSQA) the
  queries are tiled (``q.repeat``) so that KV head j is read by query head ``j % H_q``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Pattern = Literal["dense", "window", "flex", "block_sparse"]


class BlockSparseLayout(BaseModel):
    """A BigBird-style layout applied at block granularity.

    Keys and queries are cut into blocks of ``block_size`` tokens. Query block r sees key
    block c when ``|r - c| <= local_blocks``, when ``c < global_blocks`` or ``r < global_blocks``
    (global blocks see and are seen by everything), or when c is one of ``random_blocks``
    draws for row r (draws are with replacement, so a draw that hits an already visible block
    adds nothing). The draws, for n_blocks = ceil(N / block_size) rows: ``u = torch.rand(
    n_blocks, random_blocks, generator=torch.Generator().manual_seed(seed))`` and row r draws
    ``floor(u[r] * span)``, span = r + 1 when causal (later blocks are masked anyway) else
    n_blocks. Causal layers additionally mask keys after the query, token by token.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    block_size: int = Field(64, ge=1)
    local_blocks: int = Field(1, ge=0)
    global_blocks: int = Field(1, ge=0)
    random_blocks: int = Field(1, ge=0)
    seed: int = 0


class AttentionConfig(BaseModel):
    """One attention layer. Invalid combinations raise ``ValueError`` at construction.

    Masks (True = may attend), with query index i and key index j:

    - ``causal``: j <= i.
    - ``window=w`` (flash-attn's ``window_size`` convention): causal i - w <= j <= i;
      non-causal |i - j| <= w.
    - ``global_tokens=g`` (needs a window; window + globals is Flex-SQA): keys j < g are
      visible to every query (still j <= i when causal); non-causal queries i < g see all keys.
    - ``block_sparse``: see `BlockSparseLayout`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    d_model: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_q_heads: int = Field(gt=0)
    n_kv_heads: int = Field(gt=0)
    head_dim: int | None = Field(None, gt=0)
    causal: bool = True
    window: int | None = Field(None, ge=0)
    global_tokens: int = Field(0, ge=0)
    block_sparse: BlockSparseLayout | None = None
    rope_theta: float | None = Field(None, gt=0)
    bias: bool = False
    backend: str = Field("auto", min_length=1)

    @model_validator(mode="after")
    def _check(self) -> AttentionConfig:
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"n_heads={self.n_heads} does not divide d_model={self.d_model}: head_dim "
                    f"defaults to d_model // n_heads, so pick n_heads among the divisors of "
                    f"{self.d_model} or set head_dim explicitly"
                )
            # Frozen model: fill the derived default once (gpt-fast's __post_init__ habit).
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        for field in ("n_q_heads", "n_kv_heads"):
            if getattr(self, field) > self.n_heads:
                raise ValueError(
                    f"{field}={getattr(self, field)} exceeds n_heads={self.n_heads}: n_heads is "
                    f"the reference head count H, and query/KV heads must be in 1..{self.n_heads}"
                )
        hq, hkv = self.n_q_heads, self.n_kv_heads
        if hq >= hkv and hq % hkv:
            raise ValueError(
                f"n_kv_heads={hkv} does not divide n_q_heads={hq}: each KV head must serve the "
                f"same number of query heads; allowed n_kv_heads: {_divisors(hq)}"
            )
        if hq < hkv and hkv % hq:
            raise ValueError(
                f"n_q_heads={hq} does not divide n_kv_heads={hkv} (rSQA tiles the queries over "
                f"the KV heads); allowed n_q_heads below {hkv}: {_divisors(hkv)[:-1]}"
            )
        assert self.head_dim is not None  # filled just above
        if self.rope_theta is not None and self.head_dim % 2:
            raise ValueError(
                f"rope_theta needs an even head_dim (rotary pairs dimensions), got "
                f"head_dim={self.head_dim}; set rope_theta=None or use an even head_dim"
            )
        if self.global_tokens and self.window is None:
            raise ValueError(
                f"global_tokens={self.global_tokens} needs a window: in a dense layer every "
                "key is visible already; set window (Flex-SQA) or global_tokens=0"
            )
        if self.block_sparse is not None and (self.window is not None or self.global_tokens):
            raise ValueError(
                "block_sparse cannot be combined with window or global_tokens: use the "
                "layout's local_blocks and global_blocks instead"
            )
        return self

    @property
    def is_reverse(self) -> bool:
        """rSQA: fewer query heads than KV heads, queries tiled over the KV heads."""
        return self.n_q_heads < self.n_kv_heads

    @property
    def attn_heads(self) -> int:
        """Heads the attention kernel computes, and the heads feeding o_proj."""
        return max(self.n_q_heads, self.n_kv_heads)

    @property
    def pattern(self) -> Pattern:
        """The mask family: dense (maybe causal), window, flex (window + globals), block_sparse."""
        return pattern_of(self.window, self.global_tokens, self.block_sparse)

    @property
    def scale(self) -> float:
        """The softmax scale, 1 / sqrt(head_dim)."""
        assert self.head_dim is not None  # `_check` fills it
        return self.head_dim**-0.5


def pattern_of(
    window: int | None, global_tokens: int, block_sparse: BlockSparseLayout | None
) -> Pattern:
    """The mask family: dense (maybe causal), window, flex (window + globals), block_sparse."""
    if block_sparse is not None:
        return "block_sparse"
    if window is not None:
        return "flex" if global_tokens else "window"
    return "dense"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
