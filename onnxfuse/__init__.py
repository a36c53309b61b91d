"""onnxfuse: shrink exported ONNX networks by merging (Intra-Fusion) or pruning coupled channels."""

import os as _os

# Before ONNX Runtime is imported: its telemetry client (1.2x) keeps files in TMPDIR (.ses) and in
# ~/.cache/Microsoft, and onnxfuse writes nothing outside its outputs. Set the variable to keep it.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .analysis.rules import register_op_rule
from .api import (
    bench,
    compress,
    finetune,
    inspect,
    make_calibration,
    make_synthetic_calibration,
    merge,
    sweep,
    validate,
)
from .errors import OnnxfuseError
from .methods import register_method
from .methods.importance import register_importance
from .pipeline import register_pass
from .repair import register_repair
from .training import register_training_method
from .version import __version__

__all__ = ["OnnxfuseError", "__version__", "bench", "compress", "finetune", "inspect", "make_calibration", "merge",
           "make_synthetic_calibration", "register_importance", "register_method", "register_op_rule",
           "register_pass", "register_repair", "register_training_method", "sweep", "validate"]
