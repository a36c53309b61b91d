"""Repairs with calibration data, one module per repair, each adding to the registry."""

# each module registers its repair, in the order --repair lists the choices
from . import stats  # noqa: F401, I001
from . import lsq  # noqa: F401
from . import rescale  # noqa: F401
from . import select  # noqa: F401
from .registry import REPAIRS, RepairJob, register_repair

__all__ = ["REPAIRS", "RepairJob", "register_repair"]
