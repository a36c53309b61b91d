"""Methods: how each group's channel map is chosen, and the one path that applies it."""

# each module registers its method; prune first, the default and the first choice
from . import prune  # noqa: F401, I001
from . import intra_fusion  # noqa: F401
from .registry import METHODS, Method, register_method

__all__ = ["METHODS", "Method", "register_method"]
