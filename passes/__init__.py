"""Pipeline passes, one module per pass (see onnxfuse/pipeline/contract.py): each declares the
Context fields it requires and provides and registers itself by name."""

from . import (  # noqa: F401
    analyze,
    capture,
    choose_importance,
    emit,
    fuse,
    keep_whole,
    load,
    normalize,
    plan,
    repair,
    score,
    sdprun,
    split_train,
    tpp,
    train,
    validate,
    warm_up,
)
