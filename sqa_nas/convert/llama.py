"""A Hugging Face folder of the Llama family (config.json + *.safetensors) as an sqa-nas model.

Read: ``LlamaForCausalLM``, ``MistralForCausalLM`` and ``Qwen2ForCausalLM``, the decoders
whose block is exactly sqa-nas's (`sqa_nas.model`): pre-norm RMSNorm, rotary attention with
H query and H_kv key/value heads (query head i reads KV head i // (H / H_kv)), SwiGLU MLP,
final RMSNorm, LM head tied or not. The names map one to one:

    model.embed_tokens                    -> embed
    model.layers.i.input_layernorm        -> layers.i.attn_norm
    model.layers.i.self_attn.{q,k,v,o}_proj -> layers.i.attn.{q,k,v,o}_proj
    model.layers.i.post_attention_layernorm -> layers.i.ffn_norm
    model.layers.i.mlp.gate_proj / up_proj / down_proj -> layers.i.ffn.w1 / w3 / w2
    model.norm, lm_head                   -> norm, lm_head

RoPE needs no permutation: transformers' Llama rotates in the rotate-half layout (dimension
d pairs with d + D/2, ``rotate_half``) with ``inv_freq = theta^(-2d/D)``, which is
`sqa_nas.attention.rope`'s layout (HF's conversion script already permuted Meta's
interleaved checkpoints into it); tests/convert/test_llama.py checks equal logits.

Features sqa-nas cannot represent are refused, naming the key: an activation other than
SiLU, MLP biases, RoPE scaling (llama3, yarn, linear, dynamic ...) or partial rotary.
Attention biases are kept (sqa-nas's ``bias``: Llama's ``attention_bias``; Qwen2's q/k/v
biases, its o_proj bias made zero). Sliding windows are kept: HF's window of w keys
(``kv > q - w``) is sqa-nas's ``window = w - 1`` (``q - window <= kv <= q``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from sqa_nas.errors import UserError, first_error
from sqa_nas.model import ModelConfig

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
# Tensors a checkpoint may hold that the model computes instead (RoPE's inverse frequencies).
_IGNORED = ("rotary_emb.inv_freq",)
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def read_llama_folder(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], str]:
    """(config, sqa-nas state_dict, architecture name) of a Llama-family folder; `UserError`
    naming the first problem (unknown architecture, a feature sqa-nas lacks, missing or
    misshapen weights, an unreadable file)."""
    cfg = _read_config_json(folder / "config.json")
    arch = architecture_of(cfg, folder)
    config = llama_config(cfg, folder / "config.json")
    tensors = read_safetensors(folder)
    return config, map_weights(tensors, config, cfg, folder), arch


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of model settings")
    return data


def architecture_of(cfg: dict[str, Any], folder: Path) -> str:
    """The folder's architecture if convert reads it, else `UserError` listing those it reads."""
    archs = cfg.get("architectures") or []
    known = [a for a in archs if a in ARCHITECTURES] if isinstance(archs, list) else []
    if known:
        return known[0]
    by_type = {v: k for k, v in ARCHITECTURES.items()}
    if not archs and cfg.get("model_type") in by_type:
        return by_type[cfg["model_type"]]
    shown = archs[0] if isinstance(archs, list) and archs else cfg.get("model_type")
    raise UserError(
        f"{folder}: architecture {shown!r} is not one convert reads "
        f"({', '.join(ARCHITECTURES)}: Llama-family decoders)"
    )


def _int(cfg: dict[str, Any], key: str, where: Path, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None and default is not None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}: {key} must be a whole number >= 1, got {value!r}")
    return value


def rope_theta_of(cfg: dict[str, Any], where: Path) -> float:
    """RoPE's base from ``rope_parameters`` (transformers 5) or ``rope_theta`` /
    ``rope_scaling`` (earlier); `UserError` for any scaled RoPE."""
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    if isinstance(params, dict) and "rope_theta" in params:
        theta, kind = params["rope_theta"], params.get("rope_type", "default")
    else:
        theta = cfg.get("rope_theta", 10_000.0)
        kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind != "default":
        raise UserError(
            f"{where}: RoPE scaling {kind!r} is not supported (sqa-nas's RoPE is the plain "
            "rotary embedding with one base)"
        )
    if isinstance(theta, bool) or not isinstance(theta, int | float) or theta <= 0:
        raise UserError(f"{where}: rope_theta must be a positive number, got {theta!r}")
    return float(theta)


def llama_config(cfg: dict[str, Any], where: Path) -> ModelConfig:
    """The sqa-nas `ModelConfig` of a Llama-family config.json (every layer MHA / GQA as in
    the source); `UserError` naming a feature sqa-nas cannot represent."""
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(
            f"{where}: hidden_act {act!r} is not supported: sqa-nas's MLP is SwiGLU (silu)"
        )
    if cfg.get("mlp_bias"):
        raise UserError(f"{where}: mlp_bias is not supported: sqa-nas's MLP has no biases")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise UserError(f"{where}: partial_rotary_factor is not supported (RoPE on all dims)")
    d_model = _int(cfg, "hidden_size", where)
    n_heads = _int(cfg, "num_attention_heads", where)
    n_kv = _int(cfg, "num_key_value_heads", where, n_heads)
    head_dim = _int(cfg, "head_dim", where, d_model // n_heads or 1)
    windows = _windows(cfg, _int(cfg, "num_hidden_layers", where), where)
    bias = bool(cfg.get("attention_bias")) or cfg.get("model_type") == "qwen2"
    layer: dict[str, Any] = {"n_q_heads": n_heads, "n_kv_heads": n_kv}
    if bias:
        layer["bias"] = True
    eps = cfg.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or eps <= 0:
        raise UserError(f"{where}: rms_norm_eps must be a positive number, got {eps!r}")
    try:
        return ModelConfig(
            vocab_size=_int(cfg, "vocab_size", where),
            d_model=d_model,
            n_layers=len(windows),
            n_heads=n_heads,
            head_dim=head_dim,
            ffn_dim=_int(cfg, "intermediate_size", where),
            causal=True,
            rope_theta=rope_theta_of(cfg, where),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            norm_eps=float(eps),
            layers=[{**layer, **({"window": w} if w is not None else {})} for w in windows],
        )
    except ValidationError as exc:
        raise UserError(f"{where}: {first_error(exc)}") from None


def _windows(cfg: dict[str, Any], n_layers: int, where: Path) -> list[int | None]:
    """Each layer's sqa-nas window (None: full causal attention)."""
    window = cfg.get("sliding_window")
    if window is None or cfg.get("model_type") == "qwen2" and not cfg.get("use_sliding_window"):
        return [None] * n_layers
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise UserError(f"{where}: sliding_window must be a whole number >= 1, got {window!r}")
    types = cfg.get("layer_types") or ["sliding_attention"] * n_layers
    if len(types) != n_layers:
        raise UserError(f"{where}: layer_types has {len(types)} entries for {n_layers} layers")
    return [window - 1 if t == "sliding_attention" else None for t in types]


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's *.safetensors files (the shards an index names, when there
    is one); `UserError` when there are none, a shard is missing or a file is unreadable."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_config_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: no weight_map")
        files = [folder / name for name in sorted(set(map(str, weight_map.values())))]
        for path in files:
            if not path.is_file() or path.parent != folder:
                raise UserError(f"{index} names {path.name}, which is missing")
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" ({bins[0]} is not read: save with safe_serialization)" if bins else ""
        raise UserError(f"{folder}: missing weights, no *.safetensors file{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{path}: cannot read the weights ({exc})") from None
    return tensors


def map_weights(
    tensors: dict[str, torch.Tensor], config: ModelConfig, cfg: dict[str, Any], folder: Path
) -> dict[str, torch.Tensor]:
    """The sqa-nas state_dict of HF `tensors` (names in the module docstring); `UserError`
    naming the first missing, misshapen or unexpected tensor."""
    names: dict[str, str] = {
        "embed.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
    }
    if not config.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i, layer in enumerate(config.layer_configs):
        hf, ours = f"model.layers.{i}", f"layers.{i}"
        names[f"{ours}.attn_norm.weight"] = f"{hf}.input_layernorm.weight"
        names[f"{ours}.ffn_norm.weight"] = f"{hf}.post_attention_layernorm.weight"
        for proj in _ATTN:
            names[f"{ours}.attn.{proj}.weight"] = f"{hf}.self_attn.{proj}.weight"
            if layer.bias:
                names[f"{ours}.attn.{proj}.bias"] = f"{hf}.self_attn.{proj}.bias"
        for theirs, own in _MLP.items():
            names[f"{ours}.ffn.{own}.weight"] = f"{hf}.mlp.{theirs}.weight"
    out: dict[str, torch.Tensor] = {}
    missing = []
    for own, theirs in names.items():
        if theirs in tensors:
            out[own] = tensors[theirs]
        elif own.endswith("o_proj.bias") and cfg.get("model_type") == "qwen2":
            d = config.d_model  # Qwen2's o_proj has no bias: the same as a zero one
            out[own] = torch.zeros(d, dtype=tensors[names["embed.weight"]].dtype)
        else:
            missing.append(theirs)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{folder}: missing weights {missing[0]}{more}")
    used = set(names.values()) | ({"lm_head.weight"} if config.tie_embeddings else set())
    extra = sorted(n for n in tensors if n not in used and not n.endswith(_IGNORED))
    if extra:
        raise UserError(
            f"{folder}: unexpected weight {extra[0]}: config.json does not describe it, so "
            "converting would drop it"
        )
    _check_shapes(out, config, folder, names)
    return out


def _check_shapes(
    state: dict[str, torch.Tensor], config: ModelConfig, folder: Path, names: dict[str, str]
) -> None:
    d, layer = config.d_model, config.layer_configs
    for own, tensor in state.items():
        if not tensor.is_floating_point():
            raise UserError(f"{folder}: {names[own]} is {tensor.dtype}, not a float tensor")
        parts = own.split(".")
        if own in ("embed.weight", "lm_head.weight"):
            want: tuple[int, ...] = (config.vocab_size, d)
        elif own == "norm.weight" or parts[-2].endswith("norm") or own.endswith("o_proj.bias"):
            want = (d,)
        else:
            c = layer[int(parts[1])]
            assert c.head_dim is not None  # AttentionConfig fills it
            rows = {
                "q_proj": c.n_q_heads * c.head_dim,
                "k_proj": c.n_kv_heads * c.head_dim,
                "v_proj": c.n_kv_heads * c.head_dim,
                "o_proj": d,
                "w1": config.ffn_dim,
                "w3": config.ffn_dim,
                "w2": d,
            }[parts[-2]]
            cols = {"o_proj": c.n_q_heads * c.head_dim, "w2": config.ffn_dim}.get(parts[-2], d)
            want = (rows,) if parts[-1] == "bias" else (rows, cols)
        if tuple(tensor.shape) != want:
            raise UserError(
                f"{folder}: {names[own]} has shape {tuple(tensor.shape)}; config.json gives {want}"
            )
