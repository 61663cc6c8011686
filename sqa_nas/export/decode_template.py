"""The decoding section of the model.py that `sqa-nas export` writes: the KV cache, the
attention of new tokens over it, sampling and the generation loop.

`sqa_nas.export.torch_code` pastes this file's code (everything after its imports) into
model.py where `model_template.py` marks it, and drops the template's import of it. So it
imports nothing but what model_template.py imports (torch), and knows the model only
through the arguments it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------- decoding
class LayerCache:
    """One layer's keys and values for incremental decoding, RoPE already applied.

    k, v: (B, H_kv, S, D) slot buffers. A layer caches its H_kv key/value heads, never the
    H_q query heads: the KV cache of an SQA layer is the size of a GQA layer's with the same
    H_kv (arXiv 2510.01817, section 3). A layer whose queries may see any earlier token (dense,
    block-sparse) keeps token p in slot p and grows. A windowed layer keeps only what its mask
    still shows a later query: its first `global_tokens` tokens in slots 0..g-1, and the last
    window + 1 tokens (a query and the `window` before it) in a ring of slots g..g+window,
    token p >= g in slot g + (p - g) % (window + 1); it never holds more than g + window + 1.
    pos: (S,) the position in each slot of a windowed layer (-1: empty).
    """

    def __init__(
        self,
        *,
        window: int | None = None,
        global_tokens: int = 0,
        sparse: bool = False,
        capacity: int = 0,
    ) -> None:
        self.window, self.global_tokens, self.sparse = window, global_tokens, sparse
        self.capacity = capacity  # slots a growing layer allocates at first (a length hint)
        self.limit = None if window is None else global_tokens + window + 1
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.length = 0  # tokens seen: the next one is at position `length`

    @property
    def held(self) -> int:
        """Slots holding a token: 0..held-1 (slots fill in order)."""
        return self.length if self.limit is None else min(self.length, self.limit)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The keys and values held, (B, H_kv, held, D) each; () before the first token."""
        if self.k is None or self.v is None:
            return ()
        return self.k[:, :, : self.held], self.v[:, :, : self.held]

    def slot(self, p: int) -> int:
        """The slot of the token at position p."""
        g = self.global_tokens
        if self.window is None or p < g:
            return p
        return g + (p - g) % (self.window + 1)

    def reserve(self, like: torch.Tensor, size: int) -> None:
        """Buffers of at least `size` slots (a windowed layer: `limit`), batch, heads, head_dim,
        dtype and device of `like` (B, H_kv, n, D), keeping what they hold."""
        if self.k is not None and self.k.shape[2] >= min(size, self.limit or size):
            return
        old = 0 if self.k is None else self.k.shape[2]
        size = self.limit or max(size, self.capacity, 2 * old)
        b, h, _, d = like.shape
        k, v = like.new_empty(b, h, size, d), like.new_empty(b, h, size, d)
        if self.k is not None and self.v is not None:
            k[:, :, : self.held], v[:, :, : self.held] = self.tensors()
        self.k, self.v = k, v
        if self.window is not None:
            self.pos = torch.full((size,), -1, dtype=torch.long, device=like.device)

    def write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add the keys and values of the next n tokens, (B, H_kv, n, D) each, keeping what a
        later query can see. One token goes in by slicing (no host-device copy)."""
        start, n = self.length, k.shape[2]
        end = start + n
        self.reserve(k, end)
        assert self.k is not None and self.v is not None
        if self.window is None:
            self.k[:, :, start:end], self.v[:, :, start:end] = k, v
            self.length = end
            return
        assert self.pos is not None
        if n == 1:
            s = self.slot(start)
            self.k[:, :, s : s + 1], self.v[:, :, s : s + 1] = k, v
            self.pos[s] = start
        else:  # the global tokens among them, and the last window + 1
            g, w, dev = self.global_tokens, self.window, k.device
            early = torch.arange(start, max(start, min(end, g)), device=dev)
            kept = torch.cat([early, torch.arange(max(start, g, end - w - 1), end, device=dev)])
            slots = torch.where(kept < g, kept, g + (kept - g) % (w + 1))
            self.k.index_copy_(2, slots, k.index_select(2, kept - start))
            self.v.index_copy_(2, slots, v.index_select(2, kept - start))
            self.pos.index_copy_(0, slots, kept)
        self.length = end

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask_at):
        """Attention of the next n tokens over what this layer can see, their keys and values
        stored: q (B, H, n, D), k and v (B, H_kv, n, D) -> (B, H, n, D). mask_at(q_pos, k_pos,
        length) -> (n, L) bool is the layer's mask between positions, asked only when some key
        is hidden from some query: one new token of a dense or windowed layer sees every key
        its layer holds."""
        start, n, dev = self.length, q.shape[2], q.device
        k_pos: torch.Tensor | None
        if self.window is not None and n > 1:  # its writes may drop keys its queries see
            self.reserve(k, start + n)
            held = self.held
            assert self.k is not None and self.v is not None and self.pos is not None
            keys = torch.cat([self.k[:, :, :held], k], dim=2)
            values = torch.cat([self.v[:, :, :held], v], dim=2)
            k_pos = torch.cat([self.pos[:held], torch.arange(start, start + n, device=dev)])
            self.write(k, v)
        else:
            self.write(k, v)
            keys, values = self.tensors()
            k_pos = torch.arange(start + n, device=dev) if self.sparse or n > 1 else None
        mask = None
        if k_pos is not None:
            mask = mask_at(torch.arange(start, start + n, device=dev), k_pos, start + n)
        return grouped_attention(q, keys, values, mask, scale)


class KVCache:
    """The caches of every layer for one batch of sequences (`Transformer.new_cache`)."""

    def __init__(self, layers: list[LayerCache]) -> None:
        self.layers = layers

    @property
    def length(self) -> int:
        """Tokens seen so far: the position of the next one."""
        return self.layers[0].length

    def nbytes(self) -> int:
        """Bytes of the keys and values held, all layers: what one decoding step reads."""
        return sum(t.numel() * t.element_size() for c in self.layers for t in c.tensors())


# The kernels a decoding step may use: every one but cuDNN's, which builds a new execution
# plan (tens of ms) for each key length it meets, and a growing cache meets a new one at
# every step (pytorch/pytorch#155958). Flash and memory-efficient attention take any length.
DECODE_BACKENDS = [
    torch.nn.attention.SDPBackend.FLASH_ATTENTION,
    torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION,
    torch.nn.attention.SDPBackend.MATH,
]


def grouped_attention(q, k, v, mask, scale: float) -> torch.Tensor:
    """q (B, H, M, D) over k, v (B, H_kv, L, D), query head i reading KV head i // (H // H_kv);
    mask (M, L) bool (True = may attend) or None -> (B, H, M, D). The query heads of a group
    are folded into the query length, so K and V are read as H_kv heads, never copied to H:
    what makes a small KV cache fast to decode from."""
    b, h, m, d = q.shape
    group = h // k.shape[1]
    q = q.reshape(b, k.shape[1], group * m, d)  # (B, H_kv, G * M, D)
    if mask is not None:
        mask = mask.repeat(group, 1)  # (G * M, L)
    with torch.nn.attention.sdpa_kernel(DECODE_BACKENDS):
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return y.reshape(b, h, m, d)  # a copy where the kernel returns (B, L, H, D) transposed


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None):
    """The next token of each row, logits (B, vocab_size) -> (B, 1) int64: the most likely
    when temperature is 0, else drawn from softmax(logits / temperature) over the top_k most
    likely tokens (all when None), as nanoGPT samples."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


@torch.no_grad()
def generate_tokens(model, idx, max_new_tokens: int, temperature=1.0, top_k=None, cache=True):
    """`Transformer.generate`: idx (B, N) continued by max_new_tokens tokens -> (B, N +
    max_new_tokens). With `cache`, the prompt runs once and each new token attends to the
    layers' KV caches; without, every step runs the whole sequence again."""
    kv = model.new_cache(idx.shape[1] + max_new_tokens) if cache else None
    out, step = idx, idx
    for _ in range(max_new_tokens):
        logits = model(step, kv)[:, -1] if kv is not None else model(out)[:, -1]
        token = sample(logits, temperature, top_k)
        out = torch.cat([out, token], dim=1)
        step = token
    return out
