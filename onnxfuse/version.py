"""The installed version of onnxfuse (the source tree's when it was never installed)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnxfuse")
except PackageNotFoundError:
    __version__ = "0.1.0"
