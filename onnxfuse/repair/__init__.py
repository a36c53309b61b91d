"""Repairs with calibration data, one module per repair, each adding to the registry."""

# each module registers its repair; stats first, the default with --calib
from . import stats  # noqa: F401, I001
from . import lsq  # noqa: F401
from .registry import REPAIRS, RepairJob, register_repair

__all__ = ["REPAIRS", "RepairJob", "register_repair"]
