"""What a model costs, computed from its config without running anything.

FLOPs count a multiply-add as 2. Attention FLOPs are the score (Q K^T) and value (P V)
products over the keys each query actually sees (`count_visible`), so windows and
block-sparse layouts are accounted for exactly. Training costs 3x the forward pass.

`memory_estimate` bounds the bytes a training run needs at its peak, from the same config
(nothing is allocated): weights, gradients, AdamW state and the activations a batch keeps for
its backward pass (`activation_bytes` states the formula).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import asdict, dataclass

from sqa_nas.attention.config import AttentionConfig
from sqa_nas.attention.masks import MaskSpec, count_visible
from sqa_nas.kernels.sdpa import MAX_MASKED_SEQ_LEN
from sqa_nas.model import ModelConfig


@dataclass(frozen=True)
class LayerCost:
    """What one layer costs: parameters, forward FLOPs per token, KV-cache bytes per token."""

    params: int
    attn_flops: float  # per token, forward: Q K^T and P V
    proj_flops: float  # per token, forward: q, k, v and o projections
    ffn_flops: float  # per token, forward
    kv_bytes: int  # KV-cache bytes per token

    @property
    def flops(self) -> float:
        """Forward FLOPs per token of the whole layer (attention products, projections, FFN)."""
        return self.attn_flops + self.proj_flops + self.ffn_flops


@dataclass(frozen=True)
class ModelCost:
    """What a whole model costs at `seq_len`, per layer and in total, and its speedup over
    the dense MHA model of the same shape (`analyze`)."""

    seq_len: int
    layers: list[LayerCost]
    params: int
    flops: float  # per token, forward, whole model (embedding lookup free, LM head counted)
    attn_flops: float  # per token, forward, attention products only
    kv_bytes: int  # KV-cache bytes per token, all layers
    speedup_vs_mha: float  # forward FLOPs of the MHA model / this model's
    attn_speedup_vs_mha: float  # the same for the attention products alone

    @property
    def train_flops(self) -> float:
        """Training FLOPs per token: forward + backward, counted as 3x the forward."""
        return 3 * self.flops

    def as_dict(self) -> dict:
        """The fields as plain data (layers as dicts), with `train_flops` added."""
        d = asdict(self)
        d["train_flops"] = self.train_flops
        return d


# The longest sequence a search prices: counting the visible pairs builds vectors of N int64
# (32 MB each here), and no device trains a model on more tokens than this at once.
MAX_SEQ_LEN = 2**22

# Block-sparse layouts are (n_blocks, n_blocks) matrices, in the count and on the device.
MAX_BLOCKS = 4096


@functools.lru_cache(maxsize=256)
def _visible_pairs(spec: MaskSpec, seq_len: int) -> int:
    # Every layer of a model, and every model of a search, shares a handful of masks:
    # count each once (the count builds O(seq_len) vectors).
    return count_visible(spec, seq_len)


def attention_flops(c: AttentionConfig, seq_len: int) -> float:
    """Forward FLOPs per token of the attention products of one layer."""
    pairs = _visible_pairs(MaskSpec.of(c), seq_len)
    assert c.head_dim is not None  # AttentionConfig fills it
    return 4.0 * c.attn_heads * c.head_dim * pairs / seq_len


def _projection_params(c: AttentionConfig) -> int:
    """Weights of the q, k, v and o projections (biases not included)."""
    d = c.head_dim
    assert d is not None  # AttentionConfig fills it
    return c.d_model * (c.n_q_heads + 2 * c.n_kv_heads) * d + c.attn_heads * d * c.d_model


def layer_params(c: AttentionConfig, ffn_dim: int) -> int:
    """Parameters of layer `c` with an FFN of width `ffn_dim`: the q/k/v/o projections (and
    biases), the two RMSNorms and the SwiGLU FFN."""
    assert c.head_dim is not None  # AttentionConfig fills it
    bias = ((c.n_q_heads + 2 * c.n_kv_heads) * c.head_dim + c.d_model) if c.bias else 0
    return _projection_params(c) + bias + 2 * c.d_model + 3 * c.d_model * ffn_dim


def layer_cost(c: AttentionConfig, ffn_dim: int, seq_len: int, kv_bytes_per_value: int = 2):
    """The `LayerCost` of layer `c` with an FFN of width `ffn_dim` at `seq_len` tokens
    (parameters: `layer_params`); the KV cache stores K and V at `kv_bytes_per_value` bytes
    per value."""
    d = c.head_dim
    assert d is not None  # AttentionConfig fills it
    proj_params = _projection_params(c)
    ffn_params = 3 * c.d_model * ffn_dim
    return LayerCost(
        params=layer_params(c, ffn_dim),
        attn_flops=attention_flops(c, seq_len),
        proj_flops=2.0 * proj_params,
        ffn_flops=2.0 * ffn_params,
        kv_bytes=2 * c.n_kv_heads * d * kv_bytes_per_value,
    )


def analyze(
    config: ModelConfig, seq_len: int, kv_bytes_per_value: int = 2, _baseline: bool = True
) -> ModelCost:
    """Parameters, FLOPs per token and KV cache of `config` at `seq_len`, with the speedup
    over the dense MHA model of the same shape (same d_model, layers, causality)."""
    layers = [
        layer_cost(c, config.ffn_dim, seq_len, kv_bytes_per_value) for c in config.layer_configs
    ]
    params = sum(x.params for x in layers) + _outer_params(config)
    flops = sum(x.flops for x in layers) + 2.0 * config.d_model * config.vocab_size
    attn = sum(x.attn_flops for x in layers)
    speedup = attn_speedup = 1.0
    if _baseline:
        mha = analyze(mha_baseline(config), seq_len, kv_bytes_per_value, _baseline=False)
        speedup, attn_speedup = mha.flops / flops, mha.attn_flops / attn
    return ModelCost(
        seq_len,
        layers,
        params,
        flops,
        attn,
        sum(x.kv_bytes for x in layers),
        speedup,
        attn_speedup,
    )


def _outer_params(config: ModelConfig) -> int:
    """Parameters outside the layers: the embedding, the LM head unless tied, the final norm."""
    embed = config.vocab_size * config.d_model
    return embed + (0 if config.tie_embeddings else embed) + config.d_model


def param_count(config: ModelConfig) -> int:
    """The model's parameters (`analyze`'s `params`), without counting any FLOPs."""
    layers = Counter(config.layer_configs)  # identical layers priced once
    return sum(n * layer_params(c, config.ffn_dim) for c, n in layers.items()) + _outer_params(
        config
    )


def mha_baseline(config: ModelConfig) -> ModelConfig:
    """The dense MHA model of the same shape: every variant's reference point."""
    return ModelConfig(
        **{
            **config.model_dump(exclude={"layers", "attention", "provenance"}),
            "attention": {"variant": "MHA"},
        }
    )


# ---------------------------------------------------------------------------- memory
RESIDUAL_BYTES = 4  # the residual stream and the norms' outputs stay float32 under autocast
MASK_BUILD_BYTES = 16  # a dense (N, N) mask is built through int64 index temporaries
RUNTIME_BYTES = 10**9  # the process: torch, the corpus; on a GPU the CUDA context, workspaces


@dataclass(frozen=True)
class MemoryEstimate:
    """The bytes a training run needs at its peak, by part (`memory_estimate`): an upper
    bound from formulas, never a measurement. `activations` is the largest batch's, the one
    `batch` names ("train", "eval", "throughput" or "reference")."""

    weights: int  # float32 parameters, plus their bf16 copies under autocast on a GPU
    gradients: int  # float32
    optimizer: int  # AdamW: two float32 moments, and the foreach update's temporary
    reference: int  # the MHA model the throughput is paired with: weights and gradients
    activations: int
    runtime: int
    batch: str

    @property
    def total(self) -> int:
        """All parts together."""
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.reference
            + self.activations
            + self.runtime
        )

    def describe(self) -> str:
        """The parts in words, e.g. "weights 1.2 MB, gradients 0.8 MB, ..."."""
        parts = ("weights", "gradients", "optimizer", "reference", "activations", "runtime")
        words = {"reference": "MHA reference", "activations": f"{self.batch} activations"}
        return ", ".join(
            f"{words.get(p, p)} {format_bytes(getattr(self, p))}"
            for p in parts
            if getattr(self, p)
        )


def format_bytes(n: float) -> str:
    """Bytes in decimal units for messages: "512 B", "8.0 TB", "24 GB" (past exabytes,
    "3.1e+21 B")."""
    if n >= 1e21:
        return f"{n:.1e} B"
    units = (("EB", 1e18), ("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
    for unit, size in units:
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{n:.0f} B"


def _layer_bytes_per_token(c: AttentionConfig, ffn_dim: int, a: int, gpu: bool) -> int:
    """Bytes one token keeps in layer `c` for the backward pass (see `activation_bytes`)."""
    assert c.head_dim is not None  # AttentionConfig fills it
    heads = 4 * c.attn_heads + 3 * c.n_kv_heads  # q, k, v; rotated q, k; output and its copy
    if gpu and c.pattern != "dense" and c.n_kv_heads < c.attn_heads:
        heads += 2 * c.attn_heads  # sdpa's masked CUDA kernels take K, V expanded to H_q
    return (
        4 * RESIDUAL_BYTES * c.d_model  # the two norms' outputs, the two residual sums
        + a * (4 * c.d_model + heads * c.head_dim + 4 * ffn_dim)
        + 4 * c.attn_heads  # the softmax's float32 log-sum-exp
    )


def activation_bytes(
    config: ModelConfig,
    seq_len: int,
    batch_size: int,
    *,
    device_type: str = "cpu",
    backward: bool = True,
    dtype_bytes: int | None = None,
) -> int:
    """Bytes the activations of one (batch_size, seq_len) step of `config` need at their
    peak: an upper bound, counted tensor by tensor from `model.Block`.

    Per token and layer, with a = `dtype_bytes` (default 2, bf16 autocast, on a GPU; 4 on
    the CPU) and d = d_model: 16 d (the norms' outputs and residual sums, float32), a (4 d +
    (4 H_q + 3 H_kv) head_dim + 4 ffn_dim) (linear inputs and outputs; q, k, v, the rotated
    q, k, the attention output and its copy; SwiGLU's four ffn_dim tensors) and 4 H_q (the
    log-sum-exp); a masked GQA layer on a GPU adds 2 a H_q head_dim (sdpa's expanded K, V).
    A training step keeps every layer's and two more (the backward's gradients of a layer
    and its temporaries); a step without `backward` keeps two layers' worth.

    Per token the model adds its embedding and final norm (12 d), the logits ((a + 12)
    vocab with a backward: bf16, their float32 copy, log-softmax and gradient; (a + 8)
    vocab without) and the input and target ids (48 bytes, two batches prefetched). Masked
    layers add the dense (N, N) mask that sdpa builds up to its `MAX_MASKED_SEQ_LEN` (16
    bytes a pair while built, then 1 per distinct mask); a layer run by FlexAttention's
    eager path (backend ``flex`` on the CPU) adds its float32 (B, H_q, N, N) scores and
    probabilities (8 bytes a pair and head)."""
    gpu = device_type == "cuda"
    a = dtype_bytes or (2 if gpu else 4)
    tokens, d, v = batch_size * seq_len, config.d_model, config.vocab_size
    per_layer = []  # bytes each layer keeps, with its count
    for c, count in Counter(config.layer_configs).items():
        scores = 0
        if not gpu and c.backend == "flex":
            scores = 8 * batch_size * c.attn_heads * seq_len * seq_len
        per_layer.append(
            (tokens * _layer_bytes_per_token(c, config.ffn_dim, a, gpu) + scores, count)
        )
    largest = max(b for b, _ in per_layer)
    layers = sum(b * n for b, n in per_layer) + 2 * largest if backward else 2 * largest
    outer = tokens * (3 * RESIDUAL_BYTES * d + (a + (12 if backward else 8)) * v + 48)
    masks = {MaskSpec.of(c) for c in config.layer_configs if c.pattern != "dense"}
    mask_bytes = 0
    if masks and seq_len <= MAX_MASKED_SEQ_LEN:
        mask_bytes = (MASK_BUILD_BYTES + len(masks)) * seq_len * seq_len
    return layers + outer + mask_bytes


def memory_estimate(
    config: ModelConfig,
    seq_len: int,
    batch_size: int,
    *,
    device_type: str = "cpu",
    eval_batch_size: int | None = None,
    eval_batches: int = 1,
    throughput_batch: int | None = None,
    throughput_seq_len: int | None = None,
    throughput_backward: bool = True,
    reference: ModelConfig | None = None,
) -> MemoryEstimate:
    """An upper bound of the bytes training `config` on `device_type` needs at its peak:
    float32 weights (plus autocast's bf16 copies on a GPU: 6 bytes a parameter), float32
    gradients (4), AdamW's two moments and the foreach update's temporary (12), the largest
    activations (`activation_bytes`) of: the training batch; the evaluation batch (no
    backward), with the ids of all `eval_batches`, which `train.evaluate` holds at once;
    and, when `throughput_batch` is set, the throughput step of this model and of
    `reference` (the MHA model it is paired with, whose weights and gradients stay: 10
    bytes a parameter on a GPU, 8 on the CPU); and `RUNTIME_BYTES` for the process.
    Formulas only: nothing is built or allocated."""
    gpu = device_type == "cuda"
    weight_bytes = 6 if gpu else 4
    params = param_count(config)
    batches = {"train": activation_bytes(config, seq_len, batch_size, device_type=device_type)}
    eval_batch = eval_batch_size or batch_size
    batches["eval"] = (
        activation_bytes(config, seq_len, eval_batch, device_type=device_type, backward=False)
        + 16 * eval_batches * eval_batch * seq_len
    )  # every validation batch's ids at once
    ref = 0
    if throughput_batch is not None:
        length = throughput_seq_len or seq_len
        for name, model in (("throughput", config), ("reference", reference)):
            if model is not None:
                batches[name] = activation_bytes(
                    model,
                    length,
                    throughput_batch,
                    device_type=device_type,
                    backward=throughput_backward,
                )
        if reference is not None:
            ref = (weight_bytes + 4) * param_count(reference)
    batch = max(batches, key=lambda k: batches[k])
    return MemoryEstimate(
        weights=weight_bytes * params,
        gradients=4 * params,
        optimizer=12 * params,
        reference=ref,
        activations=batches[batch],
        runtime=RUNTIME_BYTES,
        batch=batch,
    )
