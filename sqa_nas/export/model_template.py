"""The model.py that `sqa-nas export` writes, as a working module.

`sqa_nas.export.torch_code` copies this file with three changes: a docstring about the model
replaces this one; its CONFIG and LAYERS replace the block between the ``# >>> data`` and
``# <<< data`` lines (markers dropped); and the code of `decode_template.py` (the KV cache,
sampling) replaces the ``# >>> decode`` line, its import here dropped. Everything else is
copied as it is, so this file must import nothing but torch, the standard library and that
section. The example data below is the `tiny` preset with one layer of each mask pattern.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sqa_nas.export.decode_template import KVCache, LayerCache, generate_tokens

# fmt: off
# >>> data
CONFIG = dict(vocab_size=256, d_model=64, n_heads=8, head_dim=8, ffn_dim=192, causal=True,
              rope_theta=10000.0, tie_embeddings=True, norm_eps=1e-06)

# One dict per block, `LayerArgs` fields; left-out fields take their defaults.
LAYERS = [
    dict(n_q_heads=8, n_kv_heads=8),
    dict(n_q_heads=4, n_kv_heads=2, window=16),
    dict(n_q_heads=4, n_kv_heads=4, window=16, global_tokens=4),
    dict(n_q_heads=2, n_kv_heads=4,
         block_sparse=dict(block_size=16, local_blocks=1, global_blocks=1, random_blocks=1,
                           seed=0)),
]
# <<< data
# fmt: on


@dataclass(frozen=True)
class ModelArgs:
    """The model-wide settings; `LayerArgs` holds what differs per layer."""

    vocab_size: int
    d_model: int
    n_heads: int  # the reference head count H of the MHA model the layers are compared to
    head_dim: int
    ffn_dim: int
    causal: bool = True  # decoder (causal) or encoder (bidirectional)
    rope_theta: float | None = 10000.0  # None: no rotary embeddings
    tie_embeddings: bool = True
    norm_eps: float = 1e-6


@dataclass(frozen=True)
class LayerArgs:
    """One Sparse Query Attention layer (arXiv 2510.01817).

    Heads: H_q query heads and H_kv key/value heads. With H_q >= H_kv, query head i reads KV
    head i // (H_q // H_kv) (GQA). With H_q < H_kv (rSQA) the queries are tiled, so KV head j
    is read by query head j % H_q. The attention computes max(H_q, H_kv) heads.

    Masks (True = may attend), query i, key j:
      causal model: j <= i
      window=w: causal i - w <= j <= i; bidirectional |i - j| <= w
      global_tokens=g (needs a window): keys j < g are seen by every query (still j <= i when
        causal); in a bidirectional model queries i < g also see every key
      block_sparse: see `block_layout`

    backend: "auto" (flash-attn, FlexAttention or SDPA, whichever fits the call), "sdpa",
    "flex" or "flash_attn" (SDPA when the named kernel cannot run the call).
    """

    n_q_heads: int
    n_kv_heads: int
    window: int | None = None
    global_tokens: int = 0
    block_sparse: dict | None = None
    bias: bool = False
    backend: str = "auto"

    @property
    def attn_heads(self) -> int:
        """Heads the kernel computes and o_proj reads: max(H_q, H_kv)."""
        return max(self.n_q_heads, self.n_kv_heads)

    @property
    def masked(self) -> bool:
        """Needs a mask beyond plain causal: a window or a block-sparse layout."""
        return self.window is not None or self.block_sparse is not None


# ------------------------------------------------------------------------------- masks
def block_layout(layout: dict, n: int, causal: bool, device=None) -> torch.Tensor:
    """Which key blocks each query block sees: bool (n_blocks, n_blocks), BigBird-style.

    Query block r sees key block c when |r - c| <= local_blocks, when c or r is below
    global_blocks, or when c is one of random_blocks draws for row r from a generator
    seeded with `seed` (with replacement; causal rows draw among blocks 0..r).
    """
    nb = -(-n // layout["block_size"])
    r = torch.arange(nb, device=device)
    visible = (r[:, None] - r[None, :]).abs() <= layout["local_blocks"]
    visible |= r[None, :] < layout["global_blocks"]
    visible |= r[:, None] < layout["global_blocks"]
    if layout["random_blocks"]:
        gen = torch.Generator().manual_seed(layout["seed"])
        span = (r + 1) if causal else torch.full_like(r, nb)
        u = torch.rand(nb, layout["random_blocks"], generator=gen).to(device)
        cols = (u * span[:, None]).long().clamp_(max=nb - 1)
        visible[r[:, None].expand_as(cols), cols] = True
    return visible


def mask_mod(layer: LayerArgs, causal: bool, n: int, device=None):
    """FlexAttention's mask function (b, h, q_idx, kv_idx) -> bool for a sequence of n
    tokens; None when every query sees every key."""
    if layer.block_sparse is not None:
        bs = layer.block_sparse["block_size"]
        layout = block_layout(layer.block_sparse, n, causal, device)

        def block_sparse(b, h, q, kv):
            ok = layout[q // bs, kv // bs]
            return ok & (kv <= q) if causal else ok

        return block_sparse
    w, g = layer.window, layer.global_tokens
    if w is None and not causal:
        return None

    def windowed(b, h, q, kv):
        if w is None:
            return kv <= q
        if causal:
            ok = (kv <= q) & (q - kv <= w)
            return ok | ((kv < g) & (kv <= q)) if g else ok
        ok = (q - kv).abs() <= w
        return ok | (kv < g) | (q < g) if g else ok

    return windowed


# ---------------------------------------------------------------------------- kernels
# enable_gqa arrived in torch 2.5; older versions repeat K and V instead.
SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


@functools.cache
def load_flash_attn():
    """(module name, flash_attn_func) of the newest flash-attn installed, or (None, None)."""
    for module in ("flash_attn.cute", "flash_attn_interface", "flash_attn"):
        try:
            return module, importlib.import_module(module).flash_attn_func
        except Exception:  # not installed, or installed with a broken CUDA extension
            continue
    return None, None


@functools.cache
def has_flex_attention() -> bool:
    """Whether this torch has FlexAttention (`torch.nn.attention.flex_attention`)."""
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


@functools.cache
def compiled_flex_attention():
    """`flex_attention` compiled once for the process (static shapes)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def rope_tables(n: int, head_dim: int, theta: float, device=None, dtype=torch.float32):
    """cos, sin of shape (N, D) for rotary embeddings, rotate-half layout (LLaMA / NeoX)."""
    inv_freq = theta ** (
        -torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim
    )
    angles = torch.arange(n, device=device, dtype=torch.float64)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)  # (N, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, N, D) by position: x * cos + rotate_half(x) * sin."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# >>> decode
# ------------------------------------------------------------------------------ model
class Attention(nn.Module):
    """(B, N, d_model) -> (B, N, d_model). q_proj: d_model -> H_q * D, k_proj and v_proj:
    d_model -> H_kv * D, o_proj: max(H_q, H_kv) * D -> d_model (paper section 3.2)."""

    def __init__(self, args: ModelArgs, layer: LayerArgs) -> None:
        super().__init__()
        self.layer, self.causal, self.rope_theta = layer, args.causal, args.rope_theta
        self.head_dim = d = args.head_dim
        self.scale = d**-0.5
        self.q_proj = nn.Linear(args.d_model, layer.n_q_heads * d, bias=layer.bias)
        self.k_proj = nn.Linear(args.d_model, layer.n_kv_heads * d, bias=layer.bias)
        self.v_proj = nn.Linear(args.d_model, layer.n_kv_heads * d, bias=layer.bias)
        self.o_proj = nn.Linear(layer.attn_heads * d, args.d_model, bias=layer.bias)
        self._cache: dict = {}  # (what, N, device, dtype) -> rope tables or masks

    def cached(self, key: tuple, make):
        """`make()`, computed once per `key` and kept on the layer."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, N, d_model) -> (B, N, d_model). With `cache`, x holds the N tokens after the
        ones it has seen (positions cache.length..), and their keys and values join it."""
        layer, d = self.layer, self.head_dim
        b, n, _ = x.shape
        start = 0 if cache is None else cache.length
        q = self.q_proj(x).view(b, n, layer.n_q_heads, d).transpose(1, 2)  # (B, H_q, N, D)
        k = self.k_proj(x).view(b, n, layer.n_kv_heads, d).transpose(1, 2)  # (B, H_kv, N, D)
        v = self.v_proj(x).view(b, n, layer.n_kv_heads, d).transpose(1, 2)
        if self.rope_theta is not None:
            end = n if start == 0 else 1 << (start + n - 1).bit_length()  # decoding: 2^k rows
            cos, sin = self.cached(
                ("rope", end, x.device, x.dtype),
                lambda: rope_tables(end, d, self.rope_theta, x.device, x.dtype),
            )
            cos, sin = cos[start : start + n], sin[start : start + n]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if layer.n_q_heads < layer.n_kv_heads:
            # rSQA: tile the queries so KV head j is read by query head j % H_q.
            q = q.repeat(1, layer.n_kv_heads // layer.n_q_heads, 1, 1)  # (B, H_kv, N, D)
        if cache is None or start == 0:  # a whole sequence, or a prompt: the forward's kernels
            y = self.attend(q, k, v)  # (B, H_attn, N, D)
            if cache is not None:
                cache.write(k, v)
        else:
            y = cache.attend(q, k, v, self.scale, self.mask_at)
        return self.o_proj(y.transpose(1, 2).reshape(b, n, layer.attn_heads * d))

    def mask_at(self, q_pos: torch.Tensor, k_pos: torch.Tensor, n: int) -> torch.Tensor:
        """(M, L) bool: which keys at positions k_pos (L,) the queries at q_pos (M,) see, in
        a sequence of n tokens (a key at -1 is an empty cache slot, seen by none)."""
        size = 1 << (n - 1).bit_length()  # block layouts grow by doubling while decoding
        mod = self.cached(
            ("mask_mod", size, q_pos.device),
            lambda: mask_mod(self.layer, self.causal, size, q_pos.device),
        )
        zero = torch.zeros((), dtype=torch.long, device=q_pos.device)
        return mod(zero, zero, q_pos[:, None], k_pos[None, :]) & (k_pos >= 0)

    def attend(self, q, k, v) -> torch.Tensor:
        """q (B, H, N, D), k and v (B, H_kv, N, D) -> (B, H, N, D), through the fastest
        kernel that can run this call exactly."""
        backend = self.layer.backend
        if backend in ("auto", "flash_attn") and self.flash_can_run(q):
            return self.flash(q, k, v)
        if self.flex_can_run(q) and (
            backend == "flex" or (backend == "auto" and q.is_cuda and self.layer.masked)
        ):
            return self.flex(q, k, v)
        return self.sdpa(q, k, v)

    def sdpa(self, q, k, v) -> torch.Tensor:
        """torch's scaled_dot_product_attention; windows and block-sparse layouts go in as
        an (N, N) bool mask, fine at the lengths where the mask fits in memory."""
        n = q.shape[2]
        mask = None
        if self.layer.masked:
            mask = self.cached(("mask", n, q.device), lambda: self.dense_mask(n, q.device))
        group = q.shape[1] // k.shape[1]
        if group > 1 and (not SDPA_HAS_GQA or (mask is not None and q.is_cuda)):
            # The masked CUDA kernels refuse enable_gqa: expand K and V to the query heads.
            k = k.repeat_interleave(group, dim=1)  # (B, H_q, N, D)
            v = v.repeat_interleave(group, dim=1)
            group = 1
        gqa = {"enable_gqa": True} if group > 1 else {}
        causal = self.causal and mask is None
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, is_causal=causal, **gqa
        )

    def dense_mask(self, n: int, device) -> torch.Tensor:
        """(N, N) bool, True = may attend."""
        i = torch.arange(n, device=device)
        zero = torch.zeros((), dtype=torch.long, device=device)
        return mask_mod(self.layer, self.causal, n, device)(zero, zero, i[:, None], i[None, :])

    def flex(self, q, k, v) -> torch.Tensor:
        """FlexAttention with a block mask: compiled on CUDA (never builds the N x N
        scores), eager elsewhere (exact, but it materialises the scores)."""
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        n, compiled = q.shape[2], q.is_cuda

        def make_block_mask():
            mod = mask_mod(self.layer, self.causal, n, q.device)
            if mod is None:
                return None
            return create_block_mask(mod, None, None, n, n, device=q.device, _compile=compiled)

        block_mask = self.cached(("block_mask", n, q.device), make_block_mask)
        attention = compiled_flex_attention() if compiled else flex_attention
        gqa = q.shape[1] != k.shape[1]
        # < 128 queries: Inductor's flex-decoding template found no config on an H200 (2.11)
        options = {"FORCE_USE_FLEX_ATTENTION": True} if compiled else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without")
            kwargs = {"block_mask": block_mask, "scale": self.scale, "enable_gqa": gqa}
            return attention(q, k, v, kernel_options=options, **kwargs)

    def flex_can_run(self, q) -> bool:
        """Compiled FlexAttention (CUDA) needs head_dim >= 16; eager runs any size."""
        return has_flex_attention() and (not q.is_cuda or self.head_dim >= 16)

    def flash_can_run(self, q) -> bool:
        """flash-attn runs dense and sliding-window layers, on CUDA, in fp16 / bf16."""
        d = self.head_dim
        return (
            q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)
            and self.layer.block_sparse is None
            and not self.layer.global_tokens
            and d % 8 == 0
            and d <= 256
            and load_flash_attn()[1] is not None
        )

    def flash(self, q, k, v) -> torch.Tensor:
        """flash-attn's `flash_attn_func` (GQA and windows native); layout as in `attend`."""
        module, flash_attn_func = load_flash_attn()
        w = self.layer.window
        unlimited = None if module == "flash_attn.cute" else -1  # "no limit", per version
        window = (unlimited, unlimited) if w is None else (w, 0 if self.causal else w)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, N, H, D) in and out
        out = flash_attn_func(
            q, k, v, softmax_scale=self.scale, causal=self.causal, window_size=window
        )
        if isinstance(out, tuple):  # flash-attn-4 returns (out, lse)
            out = out[0]
        return out.transpose(1, 2)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, ffn_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, ffn_dim, bias=False)
        self.w3 = nn.Linear(d_model, ffn_dim, bias=False)
        self.w2 = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, d_model) -> (B, N, d_model)."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """One pre-norm block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, args: ModelArgs, layer: LayerArgs) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(args.d_model, eps=args.norm_eps)
        self.attn = Attention(args, layer)
        self.ffn_norm = nn.RMSNorm(args.d_model, eps=args.norm_eps)
        self.ffn = FeedForward(args.d_model, args.ffn_dim)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, N, d_model) -> (B, N, d_model); `cache`: see Attention.forward."""
        x = x + self.attn(self.attn_norm(x), cache)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """tokens (B, N) int64 -> logits (B, N, vocab_size). Pre-norm blocks, RoPE inside the
    attention, SwiGLU, final RMSNorm, LM head tied to the embedding unless told not to."""

    def __init__(self, args: ModelArgs, layers: list[LayerArgs]) -> None:
        super().__init__()
        self.args, self.layer_args = args, list(layers)
        self.embed = nn.Embedding(args.vocab_size, args.d_model)
        self.layers = nn.ModuleList(Block(args, layer) for layer in layers)
        self.norm = nn.RMSNorm(args.d_model, eps=args.norm_eps)
        self.lm_head = nn.Linear(args.d_model, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(self._init)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "w2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * len(layers)))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits for every position.

        Arguments:
            tokens: (B, N) int64 token ids in [0, vocab_size).
            cache: a `new_cache()`: tokens continue the sequences it has seen, and join it.
        Return:
            logits: (B, N, vocab_size).
        """
        x = self.embed(tokens)  # (B, N, d_model)
        caches = cache.layers if cache is not None else [None] * len(self.layers)
        for block, layer_cache in zip(self.layers, caches, strict=True):
            x = block(x, layer_cache)
        return self.lm_head(self.norm(x))  # (B, N, vocab_size)

    def new_cache(self, capacity: int = 0) -> KVCache:
        """An empty KV cache for a causal model, its dense layers sized for `capacity` tokens
        (they grow past it); windowed layers hold at most global_tokens + window + 1."""
        if not self.args.causal:
            raise ValueError("a bidirectional model sees later tokens: it cannot decode")
        return KVCache([
            LayerCache(window=x.window, global_tokens=x.global_tokens,
                       sparse=x.block_sparse is not None, capacity=capacity)
            for x in self.layer_args
        ])  # fmt: skip

    def generate(self, idx, max_new_tokens: int, temperature=1.0, top_k=None, use_cache=True):
        """Continue each row of idx (B, N) int64 by max_new_tokens tokens -> (B, N +
        max_new_tokens): the most likely token when temperature is 0, else sampled (`sample`).
        With use_cache, each new token runs alone against the layers' KV caches; without,
        each step runs the whole sequence (the same tokens, N times the work)."""
        return generate_tokens(self, idx, max_new_tokens, temperature, top_k, use_cache)


def build_model(config: dict = CONFIG, layers: list = LAYERS) -> Transformer:
    """The model, randomly initialised; load trained weights with `load_state_dict`."""
    return Transformer(ModelArgs(**config), [LayerArgs(**layer) for layer in layers])


if __name__ == "__main__":
    model = build_model()
    tokens = torch.randint(0, model.args.vocab_size, (1, 64))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params:,} parameters; logits {tuple(model(tokens).shape)}")
    if model.args.causal:
        print(f"generated {model.generate(tokens, 16, top_k=50)[0, 64:].tolist()}")
