"""The Hugging Face format: a folder `AutoModelForCausalLM` (or `AutoModelForMaskedLM` for a
bidirectional model) loads with ``trust_remote_code=True``.

    config.json            the architecture (`model_type: sqa_nas`) and `auto_map`
    configuration_sqa.py   SQAConfig(PretrainedConfig)
    modeling_sqa.py        SQAForCausalLM / SQAForMaskedLM, wrapping model.py's Transformer
    model.py               the same standalone model.py as the torch format

The two Python files below hold no model data (config.json does), so they are the same for
every export. The wrapped Transformer sits under `model.`, so model.safetensors (keyed as
model.py's state_dict, `sqa_nas.export.weights`) loads through the base-model prefix, and an
sqa-nas state_dict loads into ``hf_model.model``. A causal model is `SQAForCausalLM`, which
generates with model.py's KV cache; a bidirectional one `SQAForMaskedLM`, which does not.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from sqa_nas.export.info import ExportInfo
from sqa_nas.export.torch_code import config_fields, layer_fields

MODEL_TYPE = "sqa_nas"

CONFIGURATION_PY = '''"""Hugging Face configuration of an SQA transformer exported by sqa-nas."""

from transformers import PretrainedConfig


class SQAConfig(PretrainedConfig):
    """model.py's ModelArgs fields, plus `layers`: one LayerArgs dict per block."""

    model_type = "sqa_nas"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads",
                     "num_hidden_layers": "n_layers", "intermediate_size": "ffn_dim"}

    def __init__(self, vocab_size=256, d_model=256, n_heads=16, head_dim=16, ffn_dim=768,
                 causal=True, rope_theta=10000.0, norm_eps=1e-6, layers=None,
                 tie_word_embeddings=True, **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.ffn_dim = ffn_dim
        self.causal = causal
        self.rope_theta = rope_theta
        self.norm_eps = norm_eps
        self.layers = [dict(layer) for layer in layers or []]
        self.n_layers = len(self.layers)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
'''

MODELING_PY = '''"""Hugging Face wrappers around model.py's Transformer (trust_remote_code=True).

The Transformer sits under `model.`: model.safetensors (keyed as model.py's state_dict) loads
into it through the base-model prefix, and an sqa-nas state_dict loads with
`hf_model.model.load_state_dict(state_dict)`. A causal model generates (greedy, sampling)
with model.py's KV cache: each layer caches its H_kv heads, a windowed layer only its window.
That cache is model.py's own `KVCache`, not a transformers Cache; it travels between steps
under the name the installed transformers gives the decoding state (`past_key_values`, or
`cache` in later 5.x versions), so `generate` works from transformers 4.46 to 5.x. Beam
search, which reorders a cache, is not supported, nor are padded batches (an attention_mask
with zeros).
"""

from dataclasses import fields

import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput

from .configuration_sqa import SQAConfig
from .model import LayerArgs, ModelArgs, Transformer

# What this transformers calls the decoding state, in outputs and in generate's arguments.
OUTPUTS = {f.name for f in fields(CausalLMOutputWithPast)}
CACHE = "cache" if "cache" in OUTPUTS else "past_key_values"


class SQAPreTrainedModel(PreTrainedModel):
    """input_ids (B, N) -> logits (B, N, vocab_size). With `labels`, the loss is next-token
    cross-entropy for a causal model and per-position cross-entropy for a bidirectional one;
    label -100 is ignored."""

    config_class = SQAConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}

    def __init__(self, config: SQAConfig) -> None:
        super().__init__(config)
        args = ModelArgs(vocab_size=config.vocab_size, d_model=config.d_model,
                         n_heads=config.n_heads, head_dim=config.head_dim,
                         ffn_dim=config.ffn_dim, causal=config.causal,
                         rope_theta=config.rope_theta,
                         tie_embeddings=config.tie_word_embeddings, norm_eps=config.norm_eps)
        self.model = Transformer(args, [LayerArgs(**layer) for layer in config.layers])
        self.post_init()

    def _init_weights(self, module) -> None:
        """Nothing: Transformer initialises its own weights (GPT-2 scheme) when built."""

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value) -> None:
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def set_output_embeddings(self, value) -> None:
        self.model.lm_head = value

    def run(self, input_ids, labels=None, attention_mask=None, cache=None):
        """Logits (and loss) of input_ids, continuing `cache` when given."""
        if attention_mask is not None and (cache is None or cache.length == 0):
            if not bool(attention_mask.all()):
                raise ValueError("sqa_nas models take no padding: give rows of one length")
        logits = self.model(input_ids, cache)  # (B, N, vocab_size)
        loss = None
        if labels is not None:
            scores, targets = logits, labels
            if self.config.causal:  # position t predicts token t + 1
                scores, targets = logits[:, :-1], labels[:, 1:]
            loss = F.cross_entropy(scores.flatten(0, 1).float(), targets.flatten(),
                                   ignore_index=-100)
        if not self.config.causal:
            return MaskedLMOutput(loss=loss, logits=logits)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE: cache})


class SQAForMaskedLM(SQAPreTrainedModel):
    """A bidirectional model: every position sees every other, so it does not generate."""

    def forward(self, input_ids, labels=None, attention_mask=None, **kwargs) -> MaskedLMOutput:
        return self.run(input_ids, labels, attention_mask)


class SQAForCausalLM(SQAPreTrainedModel, GenerationMixin):
    """A causal model; `generate` decodes with model.py's KV cache."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """No transformers DynamicCache: the cache is model.py's KVCache (H_kv heads)."""
        return False

    def forward(self, input_ids, labels=None, attention_mask=None, past_key_values=None,
                cache=None, use_cache=None, **kwargs) -> CausalLMOutputWithPast:
        """With use_cache (or a cache), input_ids are the tokens after the cache's."""
        state = cache if cache is not None else past_key_values
        if state is None and use_cache:
            state = self.model.new_cache()
        return self.run(input_ids, labels, attention_mask, state)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, cache=None,
                                      attention_mask=None, use_cache=True, **kwargs):
        """The tokens the cache has not seen yet (generate passes the whole sequence)."""
        state = cache if cache is not None else past_key_values
        if state is not None:
            input_ids = input_ids[:, state.length:]
        return {"input_ids": input_ids, CACHE: state, "attention_mask": attention_mask,
                "use_cache": use_cache}


# save_pretrained copies this file, model.py and configuration_sqa.py only for a class
# registered with its auto class (transformers 4.x does not register a remote class itself).
SQAForCausalLM.register_for_auto_class("AutoModelForCausalLM")
SQAForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
'''


def transformers_missing() -> str | None:
    """Why the folder cannot be checked here, or None when transformers is installed."""
    if importlib.util.find_spec("transformers") is None:
        return (
            "transformers is not installed, so the Hugging Face folder cannot be loaded or "
            "checked here (pip install transformers, or sqa-nas[hf])"
        )
    return None


def config_json(info: ExportInfo) -> str:
    """The Hugging Face ``config.json`` of an export: model fields, per-layer fields, auto_map
    (causal LM or masked LM) and, under ``sqa_nas``, its trial or title and its weights."""
    fields: dict[str, Any] = config_fields(info.config)
    tie = fields.pop("tie_embeddings")
    auto, cls = (
        ("AutoModelForCausalLM", "SQAForCausalLM")
        if info.config.causal
        else ("AutoModelForMaskedLM", "SQAForMaskedLM")
    )
    data = {
        "model_type": MODEL_TYPE,
        "architectures": [cls],
        "auto_map": {"AutoConfig": "configuration_sqa.SQAConfig", auto: f"modeling_sqa.{cls}"},
        **fields,
        "layers": layer_fields(info.config),
        "tie_word_embeddings": tie,
        "sqa_nas": info.hf_block(),
    }
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def hf_files(info: ExportInfo) -> dict[str, str]:
    """File name -> text of the Hugging Face folder, model.py and the weights excluded."""
    return {
        "config.json": config_json(info),
        "configuration_sqa.py": CONFIGURATION_PY,
        "modeling_sqa.py": MODELING_PY,
    }
