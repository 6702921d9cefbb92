"""The model adapters' errors (a leaf module: the loader and the adapters both raise them)."""
from __future__ import annotations


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded; the message says how to get it."""
