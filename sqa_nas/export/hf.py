"""The Hugging Face format: a folder `AutoModelForCausalLM` (or `AutoModelForMaskedLM` for a
bidirectional model) loads with ``trust_remote_code=True``.

    config.json            the architecture (`model_type: sqa_nas`) and `auto_map`
    configuration_sqa.py   SQAConfig(PretrainedConfig)
    modeling_sqa.py        SQAForLM(PreTrainedModel), wrapping model.py's Transformer
    model.py               the same standalone model.py as the torch format

The two Python files below hold no trial data (config.json does), so they are the same for
every export. The wrapped Transformer sits under `model.`, so an sqa-nas state_dict loads
into ``hf_model.model``.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from sqa_nas.export.torch_code import config_fields, layer_fields
from sqa_nas.export.validate import ValidTrial
from sqa_nas.search.records import OBJECTIVES

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

MODELING_PY = '''"""Hugging Face wrapper around model.py's Transformer (trust_remote_code=True).

The Transformer sits under `model.`: an sqa-nas state_dict loads with
`hf_model.model.load_state_dict(state_dict)`.
"""

import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_sqa import SQAConfig
from .model import LayerArgs, ModelArgs, Transformer


class SQAForLM(PreTrainedModel):
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

    def forward(self, input_ids, labels=None, **kwargs) -> CausalLMOutput:
        logits = self.model(input_ids)  # (B, N, vocab_size)
        loss = None
        if labels is not None:
            scores, targets = logits, labels
            if self.config.causal:  # position t predicts token t + 1
                scores, targets = logits[:, :-1], labels[:, 1:]
            loss = F.cross_entropy(scores.flatten(0, 1).float(), targets.flatten(),
                                   ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)
'''


def transformers_missing() -> str | None:
    """Why the folder cannot be checked here, or None when transformers is installed."""
    if importlib.util.find_spec("transformers") is None:
        return (
            "transformers is not installed, so the Hugging Face folder cannot be loaded or "
            "checked here (pip install transformers, or sqa-nas[hf])"
        )
    return None


def config_json(trial: ValidTrial) -> str:
    """The Hugging Face ``config.json`` of `trial`: model fields, per-layer fields, auto_map
    (causal LM or masked LM) and the trial's study, number and objectives."""
    fields: dict[str, Any] = config_fields(trial.config)
    tie = fields.pop("tie_embeddings")
    auto = "AutoModelForCausalLM" if trial.config.causal else "AutoModelForMaskedLM"
    data = {
        "model_type": MODEL_TYPE,
        "architectures": ["SQAForLM"],
        "auto_map": {"AutoConfig": "configuration_sqa.SQAConfig", auto: "modeling_sqa.SQAForLM"},
        **fields,
        "layers": layer_fields(trial.config),
        "tie_word_embeddings": tie,
        "sqa_nas": {
            "study": trial.study,
            "trial": trial.number,
            "objectives": {
                k: {"value": v, "direction": OBJECTIVES[k]} for k, v in trial.objectives.items()
            },
        },
    }
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def hf_files(trial: ValidTrial) -> dict[str, str]:
    """File name -> text of the Hugging Face folder, model.py excluded."""
    return {
        "config.json": config_json(trial),
        "configuration_sqa.py": CONFIGURATION_PY,
        "modeling_sqa.py": MODELING_PY,
    }
