"""Calibration: token batches from any `data:` spec, and what the methods measure on them.

Every measurement taps the source model's forward on the batches, layer by layer, through
hooks (nothing is stored across layers): the attention layer's input X (B, N, d) (the
attention RMSNorm's output), the heads' outputs Y (B, N, H_a D) that W_O reads, and the
layer's output Z (B, N, d). Statistics are summed in float64.

- `head_importance`: ``I_h = (1/T) sum_tokens ||W_O[:, h] y_h||^2`` per head (select, fit).
- `normal_equations`: ``A = Y'^T Y'`` and ``B = Y'^T Z`` for the converted layer's heads Y'
  on the same X (fit; a ones column for the bias).
- `output_errors`: ``sum ||Z' - Z||^2 / sum ||Z||^2``, the converted layer's relative error
  on the source layer's inputs (reported for every method).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from pydantic import ValidationError

from sqa_nas.data import Dataset, DataSpec, load_dataset
from sqa_nas.errors import UserError, first_error
from sqa_nas.layer import SparseQueryAttention
from sqa_nas.model import Block, SQATransformer
from sqa_nas.search.yamlfile import read_yaml

DEFAULT_DATA: dict[str, Any] = {"kind": "embedded"}
Visit = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class Calibration:
    """How many calibration tokens: `batches` x `batch_size` x `seq_len`, drawn from the
    data's training split with their own `seed`."""

    batches: int = 8
    batch_size: int = 4
    seq_len: int = 256
    seed: int = 1234

    def record(self) -> dict[str, int]:
        """The JSON form kept in the provenance."""
        return dict(self.__dict__)


def read_data_spec(text: str | None, what: str = "--data") -> dict[str, Any]:
    """A `data:` spec from the command line: a kind alone (``embedded``), a YAML mapping
    (``'{kind: text, paths: [notes/*.md]}'``), or a YAML file holding the mapping or a search
    space (its ``data:`` section). Validated; `UserError` naming `what` otherwise."""
    if text is None:
        return dict(DEFAULT_DATA)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        data = read_yaml(text, f"{what} file")
        if isinstance(data, dict) and "data" in data and "kind" not in data:
            data = data["data"]
    elif text.isidentifier():
        data = {"kind": text}
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
    if not isinstance(data, dict):
        raise UserError(
            f"{what} {text!r}: expected a data kind (embedded, text, tokens, hf, mqar), a "
            "YAML mapping such as '{kind: text, paths: [notes.md]}', or a YAML file"
        )
    try:
        DataSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{what}: {first_error(exc)}") from None
    return data


def load_data(spec: dict[str, Any], vocab_size: int, what: str = "--data") -> Dataset:
    """The dataset of `spec`; `UserError` when its tokens do not fit the model's vocabulary."""
    data = load_dataset(spec)
    if data.vocab_size > vocab_size:
        raise UserError(
            f"{what}: the data's vocabulary ({data.vocab_size} tokens) is larger than the "
            f"model's ({vocab_size}); use data tokenized for this model"
        )
    return data


def calibration_batches(
    data: Dataset, cal: Calibration, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """`cal.batches` input batches (batch_size, seq_len) int64 of the training split."""
    stream = data.train_batches(cal.batch_size, cal.seq_len, seed=cal.seed, device=device)
    return [next(stream)[0] for _ in range(cal.batches)]


def attention(model: SQATransformer, i: int) -> SparseQueryAttention:
    """Layer `i`'s attention module."""
    return cast(Block, model.layers[i]).attn  # nn.ModuleList items are typed as Module


@torch.no_grad()
def tap(model: SQATransformer, batches: Sequence[torch.Tensor], visit: Visit) -> None:
    """Run `model` on each batch and call ``visit(i, X, Y, Z)`` for every layer i as it runs:
    X (B, N, d) its attention input, Y (B, N, H_a D) its heads' outputs, Z (B, N, d) its
    attention output."""
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for i in range(len(model.layers)):
        attn = attention(model, i)

        def keep(module, args, i=i):
            inputs[i] = args[0]

        def seen(module, args, out, i=i):
            visit(i, inputs.pop(i), args[0], out)

        handles.append(attn.register_forward_pre_hook(keep))
        handles.append(attn.o_proj.register_forward_hook(seen))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def heads_and_output(
    attn: SparseQueryAttention, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y, Z) of an attention layer on x: its heads' outputs (the input of its o_proj) and
    its output."""
    seen: list[torch.Tensor] = []
    handle = attn.o_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        z = attn(x)
    finally:
        handle.remove()
    return seen[0], z


def head_importance(model: SQATransformer, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, (H_a,) float64: the mean over tokens of ||W_O[:, h] y_h||^2 for each head."""
    sums: dict[int, torch.Tensor] = {}
    tokens = sum(b.numel() for b in batches)

    def visit(i: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> None:
        attn = attention(model, i)
        n_heads, d = attn.config.attn_heads, attn.o_proj.in_features // attn.config.attn_heads
        w = attn.o_proj.weight.double().view(-1, n_heads, d)  # (d_model, H_a, D)
        gram = torch.einsum("ohd,ohe->hde", w, w)  # (H_a, D, D): W_O[:, h]^T W_O[:, h]
        heads = y.double().reshape(-1, n_heads, d)  # (T, H_a, D)
        part = torch.einsum("thd,hde,the->h", heads, gram, heads)
        sums[i] = sums.get(i, 0) + part

    tap(model, batches, visit)
    return [sums[i] / tokens for i in range(len(model.layers))]


def normal_equations(
    source: SQATransformer,
    target: SQATransformer,
    layers: set[int],
    batches: Sequence[torch.Tensor],
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """For each layer in `layers`: (A, B) = (Y'^T Y', Y'^T Z) in float64, Y' the target
    layer's heads on the source layer's inputs (with a ones column when it has a bias), Z the
    source layer's output."""
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def visit(i: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> None:
        if i not in layers:
            return
        attn = attention(target, i)
        heads, _ = heads_and_output(attn, x)
        heads = heads.double().reshape(-1, heads.shape[-1])  # (T, H_q' D)
        if attn.config.bias:
            heads = torch.cat([heads, heads.new_ones(heads.shape[0], 1)], 1)
        zz = z.double().reshape(-1, z.shape[-1])  # (T, d)
        a, b = heads.T @ heads, heads.T @ zz
        if i in out:
            a, b = out[i][0] + a, out[i][1] + b
        out[i] = (a, b)

    tap(source, batches, visit)
    return out


def output_errors(
    source: SQATransformer, target: SQATransformer, batches: Sequence[torch.Tensor]
) -> list[float]:
    """Per layer: sum ||Z' - Z||^2 / sum ||Z||^2 of the target layer's output Z' against the
    source layer's Z, both on the source layer's inputs."""
    num = [0.0] * len(source.layers)
    den = [0.0] * len(source.layers)

    def visit(i: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> None:
        _, new = heads_and_output(attention(target, i), x)
        num[i] += float((new.double() - z.double()).square().sum())
        den[i] += float(z.double().square().sum())

    tap(source, batches, visit)
    return [n / d if d > 0 else 0.0 for n, d in zip(num, den)]
