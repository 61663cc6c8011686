"""The experiments behind the README's Performance section and docs/results.md: scripts
run from the repository root as ``python -m experiments.NAME`` (see experiments/README.md),
sharing `experiments.common` (all scripts) and `experiments.science` (the quality ones)."""
