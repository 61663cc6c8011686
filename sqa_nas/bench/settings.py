"""What one benchmark cell is asked to run: `BenchSettings`, its allowed values, the paper's
model family, and backend option specs (``flash_attn:pack_gqa=0``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from pydantic import ValidationError

from sqa_nas.analytics import format_bytes
from sqa_nas.attention import AttentionConfig, BlockSparseLayout
from sqa_nas.bench.memory import row_memory
from sqa_nas.errors import UserError, first_error
from sqa_nas.machine import memory_bytes
from sqa_nas.model import MAX_LAYERS, PRESETS, ModelConfig
from sqa_nas.registry import get_backend, get_variant, list_backends, register_backend

MODES = ("fwd", "bwd", "fwd+bwd")
SCOPES = ("kernel", "layer", "model")
# "native": each variant's own mask (SW-SQA its window, ...); the others override every
# variant's mask family, so that MHA heads can be compared with SQA heads under one mask.
PATTERNS = ("native", "dense", "window", "flex", "block_sparse")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The long-context masks: a 4096-token window, plus 16 global tokens for Flex-SQA.
DEFAULT_WINDOW = 4096
DEFAULT_GLOBAL_TOKENS = 16
# A row (check, compile, warm-up, repeats) past this is taken to hang; 1M-token dense MHA
# rows take about a minute on an H200.
DEFAULT_ROW_TIMEOUT_S = 900.0


def paper_family(head_dim: int, n_heads: int = 16) -> tuple[str, dict]:
    """The paper's Table 3 model at `head_dim`: d_model = H * head_dim, 8 layers, SwiGLU
    3 * d_model, vocab 10,000. head_dim 16 is the paper's own model (preset "paper"); 64 and
    128 are the presets "paper-hd64" / "paper-hd128" where kernels run well.

    Returns:
        (name, ModelConfig fields): the preset's name where one matches, else
        ``"paper-family-hd{head_dim}-h{n_heads}"``.
    """
    fields = dict(
        vocab_size=10_000,
        d_model=n_heads * head_dim,
        n_layers=8,
        n_heads=n_heads,
        ffn_dim=3 * n_heads * head_dim,
    )
    for name, preset in PRESETS.items():
        if preset == fields:
            return name, fields
    return f"paper-family-hd{head_dim}-h{n_heads}", fields


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark cell: every field fixed but the variants and lengths it loops over.
    `expand_grid` makes the cells of a sweep; `run_bench` runs one, `run_grid` many."""

    variants: Sequence[str]
    seq_lens: Sequence[int]
    batch: int = 1
    n_heads: int = 16
    head_dim: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    backend: str = "auto"
    mode: str = "fwd"
    scope: str = "kernel"
    causal: bool = True
    window: int | None = None
    global_tokens: int | None = None
    warmup: int = 3
    repeats: int = 10
    baselines: Sequence[str] = ("MHA",)
    check: bool = True
    seed: int = 0
    extra: dict = field(default_factory=dict)
    pattern: str = "native"
    preset: str | None = None  # model scope: a PRESETS name; None: `paper_family(head_dim)`
    n_layers: int | None = None  # model scope: override the preset's layer count
    check_len: int = 512  # the correctness check runs at min(N, check_len) tokens
    budget_s: float | None = None  # see `sqa_nas.timing.time_call`
    min_repeats: int = 2

    def validate(self) -> None:
        """Raise `UserError` naming the first bad setting (the CLI flag it comes from).
        A backend option spec in `backend` is registered here (`register_backend_spec`)."""
        for name in list(self.variants) + list(self.baselines):
            get_variant(name)  # UserError naming the unknown variant
        if not self.variants:
            raise UserError("--variants: give at least one variant")
        if any(n < 1 for n in self.seq_lens) or not self.seq_lens:
            raise UserError(f"--seq-lens: lengths must be positive, got {list(self.seq_lens)}")
        if self.mode not in MODES:
            raise UserError(f"--mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.scope not in SCOPES:
            raise UserError(f"--scope: {self.scope!r} is not one of {', '.join(SCOPES)}")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.pattern not in PATTERNS:
            raise UserError(f"--patterns: {self.pattern!r} is not one of {', '.join(PATTERNS)}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(
                f"--device {self.device}: no CUDA GPU is visible on this machine; use --device cpu"
            )
        if self.device not in ("cpu",) and not self.device.startswith("cuda"):
            raise UserError(f"--device: {self.device!r} is not 'cpu' or 'cuda[:N]'")
        for name in ("batch", "n_heads", "head_dim", "repeats", "check_len"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.backend != "auto":
            # unknown names fail before any timing
            get_backend(register_backend_spec(self.backend))
        if self.preset is not None and self.preset not in PRESETS:
            raise UserError(
                f"--preset: unknown model preset {self.preset!r}; presets: {', '.join(PRESETS)}"
            )
        if self.warmup < 0:
            raise UserError(f"--warmup must be >= 0, got {self.warmup}")
        if self.n_layers is not None and not 1 <= self.n_layers <= MAX_LAYERS:
            raise UserError(f"--n-layers: {self.n_layers:,} is not in 1..{MAX_LAYERS:,}")
        for name in list(self.baselines) + list(self.variants):
            try:  # --window, --global-tokens and the variant together: refused before timing
                self.layer_config(name)
            except ValidationError as exc:
                raise UserError(f"{name}: {first_error(exc)}") from None
        self.check_memory()

    def check_memory(self) -> None:
        """Raise `UserError` for the first row that needs more memory than the device has
        (`bench.memory.row_memory`, from formulas: before anything is allocated)."""
        room = memory_bytes(self.device)
        if room is None:
            return
        where = f"this machine's {format_bytes(room)} of RAM"
        if self.device.startswith("cuda"):
            where = (
                f"{self.device}'s {format_bytes(room)} ({torch.cuda.get_device_name(self.device)})"
            )
        for n in self.seq_lens:
            for name in dict.fromkeys(list(self.baselines) + list(self.variants)):
                need = row_memory(self, name, n, DTYPES[self.dtype].itemsize)
                if need.total <= room:
                    continue
                causes = {
                    need.weights: f"--n-heads {self.n_heads:,} x --head-dim {self.head_dim:,}",
                    need.check: f"--seq-lens {n:,} with --check-len {self.check_len:,}",
                    need.timed: f"--seq-lens {n:,} x --batch {self.batch:,}",
                }  # the largest part names its flags (the timed call's, on a tie)
                raise UserError(
                    f"{causes[max(causes)]}: the row {name} at N={n:,} ({self.scope} "
                    f"{self.mode} {self.dtype}) needs ~{format_bytes(need.total)} "
                    f"({need.describe()}), more than {where}"
                )

    def mask_overrides(self) -> dict:
        """AttentionConfig fields that set the mask, per `pattern`."""
        window = self.window if self.window is not None else DEFAULT_WINDOW
        globals_ = self.global_tokens if self.global_tokens is not None else DEFAULT_GLOBAL_TOKENS
        if self.pattern == "dense":
            return {"window": None, "global_tokens": 0, "block_sparse": None}
        if self.pattern == "window":
            return {"window": window, "global_tokens": 0, "block_sparse": None}
        if self.pattern == "flex":
            return {"window": window, "global_tokens": globals_, "block_sparse": None}
        if self.pattern == "block_sparse":
            return {"window": None, "global_tokens": 0, "block_sparse": BlockSparseLayout()}
        out = {}  # native: the variant's own mask, unless --window / --global-tokens say
        if self.window is not None:
            out["window"] = self.window
        if self.global_tokens is not None:
            out["global_tokens"] = self.global_tokens
        return out

    def layer_config(self, name: str) -> AttentionConfig:
        """The attention layer of variant `name` in this cell (in model scope: the model's
        first layer)."""
        if self.scope == "model":
            return self.model_config(name).layer_configs[0]
        overrides: dict = {
            "causal": self.causal,
            "backend": register_backend_spec(self.backend),
            **self.mask_overrides(),
        }
        return get_variant(name).config(
            d_model=self.n_heads * self.head_dim,
            n_heads=self.n_heads,
            head_dim=self.head_dim,
            **overrides,
        )

    def model_config(self, name: str) -> ModelConfig:
        """Model scope: `preset` (or the paper family at `head_dim`) with every layer of
        variant `name` and this cell's backend and mask."""
        fields = (
            dict(PRESETS[self.preset])
            if self.preset
            else paper_family(self.head_dim, self.n_heads)[1]
        )
        if self.n_layers is not None:
            fields["n_layers"] = self.n_layers
        attention = {
            "variant": name,
            "backend": register_backend_spec(self.backend),
            **self.mask_overrides(),
        }
        return ModelConfig(**fields, causal=self.causal, attention=attention)

    def as_dict(self) -> dict:
        """The settings as a result file's header records them (`extra` merged in)."""
        return {
            k: (list(v) if isinstance(v, tuple | list) else v)
            for k, v in self.__dict__.items()
            if k != "extra"
        } | self.extra


def register_backend_spec(spec: str) -> str:
    """The registered backend name of `spec`, registering a new backend in the global
    registry when `spec` carries options.

    ``"flash_attn:pack_gqa=0"`` builds, once, the backend class of ``flash_attn`` with the
    keyword options ``pack_gqa=False`` (values ``0/1/true/false/none`` become booleans or
    None, others stay strings) and registers it under the spec itself, so options can be
    benchmarked side by side with the default instance. A spec without ``:`` is returned as
    it is. Raises `UserError` for an option that is not ``key=value`` or that the backend
    does not take."""
    if ":" not in spec:
        return spec
    if any(b.name == spec for b in list_backends()):
        return spec
    base, *options = spec.split(":")
    kwargs = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise UserError(f"backend {spec!r}: options are key=value, got {option!r}")
        kwargs[key] = {"0": False, "1": True, "false": False, "true": True, "none": None}.get(
            value.lower(), value
        )
    cls = type(get_backend(base))
    try:
        backend = cls(**kwargs)
    except TypeError:
        raise UserError(f"backend {base!r} takes no option {', '.join(kwargs)}") from None
    backend.name = spec
    register_backend(backend)
    return spec
