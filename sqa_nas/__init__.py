"""sqa-nas: search and benchmark attention architectures built on Sparse Query Attention."""

__version__ = "0.1.0"
