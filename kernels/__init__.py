"""Attention backends, one file each; installed as `sqa_nas.kernels`."""
