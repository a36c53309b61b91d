"""Methods: how each group's channel map is chosen, and the one path that applies it."""

from . import intra_fusion, prune  # noqa: F401  (each registers its method)
from .registry import METHODS, Method, register_method

__all__ = ["METHODS", "Method", "register_method"]
