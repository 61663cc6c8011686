"""Attention benchmarks: correctness against the float64 reference first, then timing with
`sqa_nas.timing.time_call`, one typed `BenchRow` per variant and length.

Modules, in the order they build on each other: `settings` (what a cell asks for), `row`
(the records and their JSON form), `report` (result files and tables), `check` (vs
float64), `flops`, `run` (the grid), `plot`. The command line is ``python -m sqa_nas bench``
(`sqa_nas.cli.bench`).
"""

from sqa_nas.bench.check import check_config, check_layer
from sqa_nas.bench.flops import kernel_flops, model_flops, projection_flops
from sqa_nas.bench.plot import plot_rows
from sqa_nas.bench.report import (
    add_fraction_of_best,
    grid_size,
    group_rows,
    write_json,
    write_rows,
)
from sqa_nas.bench.row import SCHEMA, TIMING, BenchResult, BenchRow, as_rows
from sqa_nas.bench.run import expand_grid, run_bench, run_grid, timed_step
from sqa_nas.bench.settings import (
    DEFAULT_GLOBAL_TOKENS,
    DEFAULT_ROW_TIMEOUT_S,
    DEFAULT_WINDOW,
    DTYPES,
    MODES,
    PATTERNS,
    SCOPES,
    BenchSettings,
    paper_family,
    register_backend_spec,
)

__all__ = [
    "DEFAULT_GLOBAL_TOKENS",
    "DEFAULT_ROW_TIMEOUT_S",
    "DEFAULT_WINDOW",
    "DTYPES",
    "MODES",
    "PATTERNS",
    "SCHEMA",
    "SCOPES",
    "TIMING",
    "BenchResult",
    "BenchRow",
    "BenchSettings",
    "add_fraction_of_best",
    "as_rows",
    "check_config",
    "check_layer",
    "expand_grid",
    "grid_size",
    "group_rows",
    "kernel_flops",
    "model_flops",
    "paper_family",
    "plot_rows",
    "projection_flops",
    "register_backend_spec",
    "run_bench",
    "run_grid",
    "timed_step",
    "write_json",
    "write_rows",
]
