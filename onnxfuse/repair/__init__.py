"""Repairs with calibration data, one module per repair, each adding to the registry."""

from . import lsq, stats  # noqa: F401  (each registers its repair)
from .registry import REPAIRS, RepairJob, register_repair

__all__ = ["REPAIRS", "RepairJob", "register_repair"]
