"""Op rules, one module per op family, each adding to the one registry (registry.py)."""

from . import attention, conv, elementwise, matmul_gemm, norm, shape  # noqa: F401  (each registers its rules)
from .registry import OP_RULES, OpRule, op_key, register_op_rule, relations_for, seed_spaces

__all__ = ["OP_RULES", "OpRule", "op_key", "register_op_rule", "relations_for", "seed_spaces"]
