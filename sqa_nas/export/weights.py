"""An export's weights: ``model.safetensors``, keyed as every form of the model names them.

The sqa-nas model (`sqa_nas.model.SQATransformer`), the exported model.py's ``Transformer``
and the Hugging Face class's ``.model`` share their state_dict keys (``embed.weight``,
``layers.0.attn.q_proj.weight`` ...), so one file loads into any of them: with `load_weights`
here, with ``safetensors.torch.load_model`` beside model.py, and with ``from_pretrained``,
which finds the keys under its base-model prefix ``model.``.

A tied LM head is the embedding itself: safetensors refuses two names for one storage, so
the file holds ``embed.weight`` only, as ``save_pretrained`` writes a tied model, and every
loader ties the head back to it (`load_weights` loads into the shared parameter;
``load_model`` and ``from_pretrained`` know the tie from the model).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sqa_nas.errors import UserError
from sqa_nas.export.files import write_atomically

WEIGHTS_FILE = "model.safetensors"
# transformers refuses a safetensors file whose metadata does not name its framework.
METADATA = {"format": "pt"}


def _safetensors():
    try:
        import safetensors.torch  # optional until the export writes weights

        return safetensors.torch
    except ImportError:
        raise UserError(
            "safetensors is not installed, so the export's weights cannot be written or read "
            "(pip install safetensors)"
        ) from None


def unique_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` without the later names of a tensor it already holds (a tied LM head
    after its embedding), every tensor contiguous and on the CPU."""
    seen: set[tuple] = set()
    out = {}
    for name, tensor in state_dict.items():
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tensor.shape, tensor.stride())
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous().cpu()
    return out


def weights_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """The safetensors file of `state_dict` (tied names stored once), in memory."""
    return _safetensors().save(unique_tensors(state_dict), metadata=METADATA)


def save_weights(state_dict: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """Write `state_dict` to `folder`/model.safetensors (the folder created if needed),
    through a temporary file renamed onto it: a reader sees the old file or the new one.
    Returns the file's path."""
    path = Path(folder) / WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, weights_bytes(state_dict))
    return path


def tied_names(model: nn.Module) -> dict[str, str]:
    """name -> the earlier name of the same parameter: {"lm_head.weight": "embed.weight"}
    for a model whose head is tied to its embedding."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def check_state_dict(model: nn.Module, state_dict: dict, source: str) -> None:
    """`UserError` naming `source` and the first key that does not fit `model`: a missing
    key (a tied name may be missing), an unexpected one, a value that is not a tensor, a
    shape that differs, or a tied name whose tensor differs from the one it is tied to."""
    expected = model.state_dict()
    tied = tied_names(model)
    for name, want in expected.items():
        if name not in state_dict:
            if name in tied:
                continue
            raise UserError(f"{source}: no {name!r}, which the model needs")
        got = state_dict[name]
        if not isinstance(got, torch.Tensor):
            raise UserError(f"{source}: {name!r} is a {type(got).__name__}, not a tensor")
        if got.shape != want.shape:
            raise UserError(
                f"{source}: {name!r} has shape {tuple(got.shape)}, the model's {tuple(want.shape)}"
            )
        origin = state_dict.get(tied.get(name, ""))
        if isinstance(origin, torch.Tensor) and not torch.equal(got.cpu(), origin.cpu()):
            raise UserError(f"{source}: {name!r} differs from {tied[name]!r}, which it is tied to")
    unexpected = [name for name in state_dict if name not in expected]
    if unexpected:
        raise UserError(f"{source}: {unexpected[0]!r} is not a weight of this model")


def load_weights(model: nn.Module, folder: str | Path) -> None:
    """Load `folder`/model.safetensors into `model`, strictly: `UserError` naming the file
    when it is missing or unreadable, and naming the first key that is missing, unexpected or
    of another shape (`check_state_dict`)."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{path}: no such file (an export writes its weights there)")
    try:
        tensors = _safetensors().load_file(str(path))
    except UserError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a readable safetensors file ({first})") from None
    check_state_dict(model, tensors, str(path))
    model.load_state_dict(tensors, strict=False)  # checked above; tied names load once
