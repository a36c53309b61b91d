"""Pipeline passes: each is an object with a `name` and `run(ctx) -> ctx` (see onnxfuse/pipeline.py)."""
