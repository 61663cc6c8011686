"""Names -> attention variants and kernel backends, extensible by plugins.

    >>> from sqa_nas.registry import variant
    >>> variant("xSQA", d_model=256, n_heads=16).n_q_heads
    4

Third-party packages add variants and backends with `register_variant` / `register_backend`
(usable as decorators) or through entry points in the groups ``sqa_nas.variants`` (a
`Variant`, or a callable returning one) and ``sqa_nas.backends`` (an `AttentionBackend`
subclass or instance). Entry points load on the first lookup.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal, overload

from sqa_nas.attention.config import AttentionConfig, BlockSparseLayout, Pattern, pattern_of
from sqa_nas.attention.problem import AttentionProblem
from sqa_nas.errors import UserError
from sqa_nas.kernels.base import AttentionBackend
from sqa_nas.kernels.calibration import measured_order
from sqa_nas.kernels.flash_attn import FlashAttnBackend
from sqa_nas.kernels.flex import FlexBackend
from sqa_nas.kernels.sdpa import SdpaBackend
from sqa_nas.kernels.xformers import XformersBackend

#: A head count against the reference H: "H", "H/4", "3H/4", or a number such as "1".
HEAD_COUNT = re.compile(r"^(?:(\d*)H(?:/([1-9]\d*))?|(\d+))$")


@dataclass(frozen=True)
class Variant:
    """A named head allocation. ``q`` and ``kv`` are head counts written in terms of the
    reference H: ``"H"``, ``"H/4"``, ``"3H/4"``, or an absolute number such as ``"1"``."""

    name: str
    q: str
    kv: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for expr in (self.q, self.kv):
            if not HEAD_COUNT.match(expr):
                raise ValueError(
                    f"variant {self.name!r}: head count {expr!r} is not of the "
                    "form 'H', 'H/4', '3H/4' or a number"
                )

    def heads(self, n_heads: int) -> tuple[int, int]:
        """(H_q, H_kv) at reference H = `n_heads`, each rounded down to at least 1 (`heads_of`)."""
        return heads_of(self.q, n_heads), heads_of(self.kv, n_heads)

    def config(self, *, d_model: int, n_heads: int, **overrides: Any) -> AttentionConfig:
        """The `AttentionConfig` of this variant at `d_model` and H = `n_heads`: its head counts,
        then its `defaults`, then `overrides` (later wins). Raises ``ValidationError`` when
        the result is invalid."""
        n_q, n_kv = self.heads(n_heads)
        fields = {"n_q_heads": n_q, "n_kv_heads": n_kv, **self.defaults, **overrides}
        return AttentionConfig(d_model=d_model, n_heads=n_heads, **fields)

    @property
    def pattern(self) -> Pattern:
        """The mask family its `defaults` give (dense, window, flex or block_sparse)."""
        d = self.defaults
        return pattern_of(d.get("window"), d.get("global_tokens", 0), d.get("block_sparse"))


@overload
def heads_of(expr: str | int, n_heads: int, *, exact: Literal[False] = False) -> int: ...
@overload
def heads_of(expr: str | int, n_heads: int, *, exact: bool) -> int | None: ...
def heads_of(expr: str | int, n_heads: int, *, exact: bool = False) -> int | None:
    """The head count `expr` (`HEAD_COUNT`) means at H = `n_heads`. A variant rounds down,
    to at least 1, so it applies at any H; `exact` (a search space) gives None unless the
    count divides evenly and lies in 1..H."""
    if isinstance(expr, int):
        value, whole = expr, True
    else:
        m = HEAD_COUNT.match(expr)
        assert m is not None  # variants and search spaces check their counts on construction
        num, den, absolute = m.groups()
        scaled = int(absolute) if absolute else n_heads * int(num or 1)
        value, whole = divmod(scaled, int(den or 1))[0], scaled % int(den or 1) == 0
    if not exact:
        return max(1, value)
    return value if whole and 1 <= value <= n_heads else None


_BUILTIN_VARIANTS = [
    Variant("MHA", "H", "H", "multi-head attention, the reference"),
    Variant("GQA", "H", "H/4", "grouped-query attention: 4 query heads per KV head"),
    Variant("MQA", "H", "1", "multi-query attention: one shared KV head"),
    Variant("SQA", "H/2", "H/4", "Sparse Query Attention: half the query heads (2x FLOPs)"),
    Variant("sSQA", "H/2", "H/2", "symmetric SQA: H_q = H_kv = H/2"),
    Variant("xSQA", "H/4", "H/4", "extreme SQA: a quarter of the query heads (4x FLOPs)"),
    Variant("xSMQA", "H/4", "1", "extreme SQA with a single KV head"),
    Variant("lSQA", "3H/4", "H/4", "light SQA: three quarters of the query heads"),
    Variant("rSQA", "H/4", "H/2", "reverse SQA: fewer query than KV heads, queries tiled"),
    Variant("SW-SQA", "H/2", "H/4", "SQA heads with a sliding window", {"window": 512}),
    Variant(
        "Flex-SQA",
        "H/2",
        "H/2",
        "sSQA heads, sliding window and global tokens",
        {"window": 512, "global_tokens": 16},
    ),
    Variant(
        "BS-SQA",
        "H/2",
        "H/4",
        "SQA heads with a BigBird-style block-sparse layout",
        {"block_sparse": BlockSparseLayout()},
    ),
]

_variants: dict[str, Variant] = {}
_backends: dict[str, AttentionBackend] = {}
_plugins_loaded = False


def register_variant(obj):
    """Register a `Variant` (or, as a decorator, a function returning one). Returns `obj`."""
    v = obj() if callable(obj) and not isinstance(obj, Variant) else obj
    if not isinstance(v, Variant):
        raise TypeError(f"register_variant expects a Variant, got {type(v).__name__}")
    _variants[v.name] = v
    return obj


def register_backend(obj):
    """Register an `AttentionBackend` subclass (instantiated with no arguments) or instance.
    Usable as a class decorator. Returns `obj`."""
    backend = obj() if isinstance(obj, type) else obj
    if not isinstance(backend, AttentionBackend):
        raise TypeError(f"register_backend expects an AttentionBackend, got {type(obj)}")
    _backends[backend.name] = backend
    return obj


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for group, register in (
        ("sqa_nas.variants", register_variant),
        ("sqa_nas.backends", register_backend),
    ):
        for ep in entry_points(group=group):
            try:
                register(ep.load())
            except Exception as exc:  # a broken plugin must not break the tool
                warnings.warn(
                    f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2
                )


def list_variants() -> list[Variant]:
    """Every registered variant, built-ins first, plugins loaded on first call."""
    _load_plugins()
    return list(_variants.values())


def get_variant(name: str) -> Variant:
    """The variant called `name` (an exact match first, then case-insensitive); `UserError`
    listing the known names otherwise."""
    _load_plugins()
    if name in _variants:
        return _variants[name]
    folded = {k.lower(): v for k, v in _variants.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise UserError(f"unknown variant {name!r}; known variants: {', '.join(_variants)}")


def variant(name: str, *, d_model: int, n_heads: int, **overrides: Any) -> AttentionConfig:
    """The `AttentionConfig` of a named variant; any keyword overrides its defaults."""
    return get_variant(name).config(d_model=d_model, n_heads=n_heads, **overrides)


def list_backends() -> list[AttentionBackend]:
    """Every registered backend (available here or not), plugins loaded on first call."""
    _load_plugins()
    return list(_backends.values())


def get_backend(name: str) -> AttentionBackend:
    """The backend registered as `name`; `UserError` listing the known names otherwise."""
    _load_plugins()
    if name not in _backends:
        raise UserError(
            f"unknown backend {name!r}; known backends: {', '.join(_backends)}, or 'auto'"
        )
    return _backends[name]


def select_backend(problem: AttentionProblem, requested: str = "auto"):
    """(backend, reason) for `problem`. ``requested="auto"`` picks, among the backends that
    are available and support the problem, the first of the measured order for this GPU
    (`sqa_nas.kernels.calibration`) when it covers them all, else the highest priority;
    backends registered under an option spec ("flash_attn:pack_gqa=0") run only when named.
    A named backend that cannot run it raises `UserError` saying why and which backends can."""
    candidates, refusals = [], {}
    for backend in list_backends():
        why_not = backend.availability() or backend.unsupported(problem)
        if why_not:
            refusals[backend.name] = why_not
        else:
            candidates.append(backend)
    if requested != "auto":
        backend = get_backend(requested)
        if backend.name in refusals:
            able_names = ", ".join(b.name for b in candidates) or "none"
            raise UserError(
                f"backend {requested!r} cannot run this layer "
                f"({problem.mask.describe()}, {problem.dtype}, "
                f"{problem.device_type}): {refusals[backend.name]}; backends that "
                f"can: {able_names}"
            )
        return backend, f"requested by the config; {backend.priority(problem)[1]}"
    if not candidates:
        raise UserError(
            "no backend can run this layer: " + "; ".join(f"{k}: {v}" for k, v in refusals.items())
        )
    able = [b for b in candidates if ":" not in b.name] or candidates
    measured = measured_order(problem, able)
    if measured is not None:
        ranked, why = measured
        reason = f"{ranked[0].priority(problem)[1]}; {why}"
    else:
        ranked = sorted(able, key=lambda b: b.priority(problem)[0], reverse=True)
        reason = ranked[0].priority(problem)[1]
    others = ", ".join(b.name for b in ranked[1:])
    return ranked[0], reason + (f" (also able: {others})" if others else "")


for _v in _BUILTIN_VARIANTS:
    register_variant(_v)
for _backend in (SdpaBackend, FlexBackend, FlashAttnBackend, XformersBackend):
    register_backend(_backend)
