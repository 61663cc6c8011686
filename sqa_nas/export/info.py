"""What an export says besides the architecture: a title, where the model came from
(config.yaml's `provenance`), how its weights were made, and the trial when there is one.

Every file of an export is written from an `ExportInfo`: `trial_info` makes one for a trial
of a study (`sqa_nas.export.export_trial`), `model_info` for a config alone
(`sqa_nas.export.export_model`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqa_nas.errors import UserError
from sqa_nas.export.validate import ValidTrial
from sqa_nas.model import ModelConfig
from sqa_nas.search.records import OBJECTIVES

INIT_SEED = 0  # the seed of an untrained export's weights (`sqa_nas.model.init_weights`)
UNTRAINED = f"untrained: initialised weights (sqa_nas.model.init_weights, seed {INIT_SEED})"
GIVEN = "trained: the state_dict given to sqa_nas.export.export_model"
# How trained weights replace initialised ones: config.yaml's header and the README say it.
TRAIN_HOW = (
    "sqa-nas export ... --weights CHECKPOINT (an sqa-nas checkpoint file), or "
    "sqa-nas finetune DIR --data ... --tokens N"
)
DEFAULT_TITLE = "A Sparse Query Attention transformer"


@dataclass(frozen=True)
class ExportInfo:
    """The model, what to call it, and its provenance (with ``weights``: one line on how
    model.safetensors was made, starting "untrained:" or "trained:")."""

    config: ModelConfig
    title: str
    provenance: dict[str, Any]
    trial: ValidTrial | None = None

    @property
    def weights(self) -> str:
        """How model.safetensors was made, one line."""
        return str(self.provenance["weights"])

    @property
    def trained(self) -> bool:
        """Whether model.safetensors holds trained weights."""
        return not self.weights.startswith("untrained")

    def headline(self) -> str:
        """The title for config.yaml's first line: "trial 3 of study demo." or the title."""
        if self.trial is not None:
            return f"trial {self.trial.number} of study {self.trial.study}."
        return self.title

    def hf_block(self) -> dict[str, Any]:
        """config.json's ``sqa_nas`` entry: the trial (study, number, objectives) or the
        title, and the weights line."""
        if self.trial is None:
            return {"title": self.title, "weights": self.weights}
        return {
            "study": self.trial.study,
            "trial": self.trial.number,
            "objectives": {
                k: {"value": v, "direction": OBJECTIVES[k]}
                for k, v in self.trial.objectives.items()
            },
            "weights": self.weights,
        }


def trial_info(trial: ValidTrial, weights: str = UNTRAINED) -> ExportInfo:
    """The `ExportInfo` of a validated trial whose weights `weights` describes."""
    return ExportInfo(
        config=trial.config,
        title=f"Trial {trial.number} of study `{trial.study}`",
        provenance={**trial.provenance(), "weights": weights},
        trial=trial,
    )


def model_info(
    config: ModelConfig, title: str, provenance: dict[str, Any] | None, trained: bool
) -> ExportInfo:
    """The `ExportInfo` of `config` alone. `provenance` must be plain data (what JSON
    holds); its ``weights`` line, when it has none, says whether the weights were given
    (`trained`) or are the initialisation."""
    provenance = dict(provenance or {})
    try:
        json.dumps(provenance, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UserError(f"export provenance must be plain data (JSON): {exc}") from None
    provenance.setdefault("weights", GIVEN if trained else UNTRAINED)
    if not isinstance(provenance["weights"], str):
        raise UserError("export provenance: 'weights' must be one line of text")
    return ExportInfo(config=config, title=title.strip() or DEFAULT_TITLE, provenance=provenance)
