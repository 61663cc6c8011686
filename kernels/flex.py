"""FlexAttention (`torch.nn.attention.flex_attention`) with block masks for every pattern.

On CUDA the call is compiled (the eager path materialises the N x N scores: 20 TFLOP/s and
out of memory at 128k on an H200) and block masks, cached per (pattern, length, device),
are built without compiling: causal, window and global-token masks tile by tile from
interval arithmetic (`_band_tiles`), block-sparse ones from the dense mask up to
`DENSE_BLOCK_MASK_MAX_LEN` tokens and with the compiled `create_block_mask` past it. When
flash-attn-4 is installed, ``kernel_options={"BACKEND": "FLASH"}`` runs the masks on its
CuTe DSL kernel (window + 16 global tokens at 128k: 485-630 effective TFLOP/s against
369-400 for the Triton backend, measured on the H200); a layout on which that experimental
backend fails to build runs on the Triton backend instead, and `kernel_name` says so. On
CPU the eager path is used: exact, and free of the ~30 s compile that every new shape
costs there.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import warnings

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from sqa_nas.attention.masks import MaskSpec, dense_mask, mask_mod
from sqa_nas.attention.problem import AttentionProblem
from sqa_nas.compiling import allow_recompiles

from .base import AttentionBackend
from .flash_attn import FA4_MIN_BACKWARD_HEAD_DIM

# Eager flex materialises (B, H, N, N) scores; keep it to sizes a CPU handles anyway.
MAX_EAGER_SEQ_LEN = 8_192


@functools.cache  # asked on every forward call
def flash_backend_available() -> bool:
    """FlexAttention's FLASH backend needs flash-attn-4 (`flash_attn.cute`)."""
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except ModuleNotFoundError:
        return False


#: Block-sparse masks up to this length are built from the dense mask (N x N temporaries:
#: about 1.4 GiB at the limit); longer ones with the compiled `create_block_mask`. Causal,
#: window and global-token masks never compile: their tiles are classified exactly by
#: `_band_tiles`. (Compiling `create_block_mask` for window 4096 + 16 global tokens stalled
#: in Triton's LLVM step on the H200: experiments/results/long_context_flex_h200.log.)
DENSE_BLOCK_MASK_MAX_LEN = 12_288
TILE = 128  # FlexAttention's block size


@functools.lru_cache(maxsize=32)
def _block_mask(spec: MaskSpec, n: int, device: torch.device, compiled: bool):
    mod = mask_mod(spec, n, device)
    if mod is None:
        return None
    # Cached across calls: never build it as an inference tensor, or a later training step
    # that reuses it fails ("Inference tensors cannot be saved for backward").
    with torch.inference_mode(False):
        if spec.block_sparse is None:
            tiles = _band_tiles(spec, n, device)
        elif not compiled or n <= DENSE_BLOCK_MASK_MAX_LEN:
            tiles = _dense_tiles(spec, n, device)
        else:
            return create_block_mask(mod, None, None, n, n, device=device, _compile=True)
        return _from_tiles(*tiles, n, mod)


def _dense_tiles(spec: MaskSpec, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool (tiles, tiles) from the dense mask, padded with False to whole
    tiles: which TILE x TILE tiles have some but not all, or all, of their pairs visible."""
    nb = -(-n // TILE)
    mask = dense_mask(spec, n, device)
    assert mask is not None  # called for block-sparse layouts, which always mask
    padded = torch.nn.functional.pad(mask, (0, nb * TILE - n) * 2)
    tiles = padded.view(nb, TILE, nb, TILE).transpose(1, 2)  # (q tile, kv tile, TILE, TILE)
    full = tiles.all(-1).all(-1)
    return tiles.any(-1).any(-1) & ~full, full


def _band_tiles(spec: MaskSpec, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`_dense_tiles` of a causal / window / global-token mask without the N x N mask: per
    tile, from its first and last query q0..q1 and key k0..k1 (memory ~ tiles^2).

    A key k is visible to query q when (causal) k <= q and (q - k <= w or k < g), or
    (bidirectional) |q - k| <= w or k < g or q < g; plain causal is k <= q. Some pair of a
    tile is visible when q - k takes a value of the band or the tile holds a global row or
    column; all are when the rows and columns that are not global stay in the band for the
    tile's extreme pairs. A tile reaching past N is never full, as with padding."""
    start = torch.arange(0, n, TILE, device=device)
    end = (start + TILE - 1).clamp(max=n - 1)
    q0, q1, k0, k1 = start[:, None], end[:, None], start[None, :], end[None, :]
    w, g = spec.window, spec.global_tokens
    if w is None:  # plain causal
        some, every = k0 <= q1, k1 <= q0
    elif spec.causal:
        some = ((q1 - k0 >= 0) & (q0 - k1 <= w)) | ((k0 < g) & (k0 <= q1))
        kc0 = k0.clamp(min=g)  # the first column that is not global
        every = (k1 <= q0) & ((kc0 > k1) | (kc0 >= q1 - w))
    else:
        some = ((q0 - k1 <= w) & (q1 - k0 >= -w)) | (k0 < g) | (q0 < g)
        qc0, kc0 = q0.clamp(min=g), k0.clamp(min=g)  # the first row / column not global
        every = (qc0 > q1) | (kc0 > k1) | ((q1 - kc0 <= w) & (k1 - qc0 <= w))
    whole = start + TILE <= n
    full = some & every & whole[:, None] & whole[None, :]
    return some & ~full, full


def _from_tiles(partial: torch.Tensor, full: torch.Tensor, n: int, mod):
    """The BlockMask of (partial, full) tiles; `mod` decides inside the partial ones."""

    def indexed(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (1, 1, nb) counts, (1, 1, nb, nb) indices, selected tiles first
        order = torch.argsort(sel.int(), dim=-1, descending=True, stable=True)
        return sel.sum(-1).int()[None, None], order.int()[None, None]

    return BlockMask.from_kv_blocks(
        *indexed(partial), *indexed(full), BLOCK_SIZE=TILE, mask_mod=mod, seq_lengths=(n, n)
    )


@functools.cache
def _compiled_flex():
    allow_recompiles()  # each (shape, mask) is a new graph
    return torch.compile(flex_attention, dynamic=False)


class FlexBackend(AttentionBackend):
    """torch FlexAttention with a block mask built from the layer's `MaskSpec`: every mask
    family. Compiled on CUDA (on the FLASH backend where it applies), eager elsewhere.

    Arguments:
        compile: True / False force compiling or not; None compiles on CUDA only.
    """

    name = "flex"
    description = "torch FlexAttention with block masks (compiled on CUDA)"

    def __init__(self, *, compile: bool | None = None) -> None:
        # None: compile on CUDA, eager elsewhere.
        self.compile = compile
        # Layouts on which the FLASH backend failed to build, with the error: they run on
        # the Triton backend instead, and `kernel_name` says so.
        self.flash_failures: dict[AttentionProblem, str] = {}

    def _compiled(self, device_type: str) -> bool:
        return self.compile if self.compile is not None else device_type == "cuda"

    def _flash(self, problem: AttentionProblem) -> bool:
        """Whether the FLASH backend (flash-attn-4's kernels) runs `problem`; not for training
        below FA4_MIN_BACKWARD_HEAD_DIM, where flash-attn-4's backward is wrong."""
        return (
            problem.device_type == "cuda"
            and problem.dtype in (torch.float16, torch.bfloat16)
            and flash_backend_available()
            and _layout(problem) not in self.flash_failures
            and not (problem.requires_grad and problem.head_dim < FA4_MIN_BACKWARD_HEAD_DIM)
        )

    def unsupported(self, problem: AttentionProblem) -> str | None:
        if problem.device_type == "cpu" and problem.requires_grad:
            return "FlexAttention has no backward on CPU (torch refuses it); use 'sdpa'"
        if not self._compiled(problem.device_type) and problem.seq_len > MAX_EAGER_SEQ_LEN:
            return (
                f"eager FlexAttention materialises the N x N scores; N={problem.seq_len} > "
                f"{MAX_EAGER_SEQ_LEN} (compile it on a GPU instead)"
            )
        if self._compiled(problem.device_type) and problem.head_dim < 16:
            # Seen on the H200: the compiled kernel refuses "embedding dimension ... must be
            # at least 16".
            return f"compiled FlexAttention needs head_dim >= 16, got {problem.head_dim}"
        return None

    def priority(self, problem: AttentionProblem) -> tuple[int, str]:
        masked = problem.mask.pattern in ("flex", "block_sparse")
        if problem.device_type != "cuda":
            return (50 if masked else 20), "CPU: eager FlexAttention (exact, materialises scores)"
        if self._flash(problem):
            why = "FlexAttention on the flash-attn-4 FLASH backend"
            return (90 if masked else 60 if problem.mask.pattern == "window" else 40), why
        why = "compiled FlexAttention (Triton backend)"
        return (70 if masked else 55 if problem.mask.pattern == "window" else 30), why

    def kernel_name(self, problem: AttentionProblem, inputs=None) -> str:
        if not self._compiled(problem.device_type):
            return "flex (eager)"
        if _layout(problem) in self.flash_failures:
            return f"flex (Triton; FLASH failed: {self.flash_failures[_layout(problem)]})"
        return "flex (FLASH)" if self._flash(problem) else "flex (Triton)"

    def forward(self, q, k, v, problem: AttentionProblem) -> torch.Tensor:
        """The contract's forward. Where the FLASH backend applies it is tried first; a failure
        there (other than out-of-memory) warns and is remembered for the layout (later calls
        skip FLASH), and the call runs on FlexAttention's Triton backend instead."""
        compiled = self._compiled(q.device.type)
        block_mask = _block_mask(problem.mask, problem.seq_len, q.device, compiled)
        fn = _compiled_flex() if compiled else flex_attention

        def call(options):
            with warnings.catch_warnings():
                # The eager path is chosen on purpose on CPU; torch warns that it is unfused.
                warnings.filterwarnings("ignore", message="flex_attention called without")
                return fn(
                    q,
                    k,
                    v,
                    block_mask=block_mask,
                    scale=problem.scale,
                    enable_gqa=problem.gqa_group > 1,
                    kernel_options=options,
                )

        if not (compiled and self._flash(problem)):
            return call(None)
        try:
            return call({"BACKEND": "FLASH"})
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # FLASH is experimental in torch: keep the Triton path
            why = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:200]
            self.flash_failures[_layout(problem)] = why
            warnings.warn(
                f"FlexAttention's FLASH backend failed ({why}); using its Triton "
                "backend for this layout",
                stacklevel=2,
            )
            return call(None)


def _layout(problem: AttentionProblem) -> AttentionProblem:
    """The problem without its length: a FLASH failure is taken to hold at every length."""
    return dataclasses.replace(problem, seq_len=0)
