"""onnxfuse: shrink exported ONNX networks by merging (Intra-Fusion) or pruning coupled channels."""

from .api import bench, compress, inspect, sweep, validate
from .errors import OnnxfuseError

__all__ = ["OnnxfuseError", "bench", "compress", "inspect", "sweep", "validate"]
__version__ = "0.1.0"
