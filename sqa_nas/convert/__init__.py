"""Convert trained MHA / GQA models to SQA layouts, and fine-tune them (issue 20).

    from sqa_nas.convert import (
        Calibration, calibration_batches, convert_model, load_data, read_source,
        target_config, write_conversion,
    )
    source = read_source("my-llama/")                # HF Llama family, export or checkpoint
    target = target_config(source.model.config, "xSQA")
    data = load_data({"kind": "embedded"}, target.vocab_size)
    done = convert_model(source.model, target, "fit", calibration_batches(data, Calibration()))
    write_conversion(done, Path("my-xsqa"), provenance={"source": source.record()})

`sqa-nas convert` and `sqa-nas finetune` are these calls. The methods and their formulas are
in `sqa_nas.convert.methods` and docs/convert.md.
"""

from __future__ import annotations

from sqa_nas.convert.allocation import target_config
from sqa_nas.convert.calibrate import (
    Calibration,
    calibration_batches,
    load_data,
    read_data_spec,
)
from sqa_nas.convert.finetune import FinetuneSettings, finetune, write_record
from sqa_nas.convert.methods import METHODS, LayerPlan, solve_output
from sqa_nas.convert.pipeline import (
    DEFAULT_RIDGE,
    Conversion,
    check_conversion,
    convert_model,
    write_conversion,
)
from sqa_nas.convert.source import Source, read_source
from sqa_nas.export import export_model, load_export

__all__ = [
    "DEFAULT_RIDGE",
    "METHODS",
    "Calibration",
    "Conversion",
    "FinetuneSettings",
    "LayerPlan",
    "Source",
    "calibration_batches",
    "check_conversion",
    "convert_model",
    "export_model",
    "finetune",
    "load_data",
    "load_export",
    "read_data_spec",
    "read_source",
    "solve_output",
    "target_config",
    "write_conversion",
    "write_record",
]
