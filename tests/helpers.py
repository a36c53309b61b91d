"""Shared helpers for the tests: export torch modules, run ONNX Runtime."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort


def export(module, example, *, keep_bn: bool = False, opset: int = 17) -> onnx.ModelProto:
    """TorchScript export; eval mode folds BN into Conv, `keep_bn` keeps BatchNormalization nodes."""
    import torch

    module.eval()
    buf = io.BytesIO()
    mode = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, buf, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, opset_version=opset,
                          training=mode, do_constant_folding=not keep_bn, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def run(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    if not isinstance(feeds, dict):
        feeds = {sess.get_inputs()[0].name: feeds}
    return sess.run(None, feeds)


def randomize_bn(module, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial statistics and affine parameters."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)


def zero_dropped_channels(model: onnx.ModelProto, sparsity: float, *, fold_bn: bool = True) -> onnx.ModelProto:
    """The oracle model for exact pruning: in every prunable group, the channels that
    `keep_count` would drop (the first ones) get all their scored weights — producer rows,
    consumer columns, BN scales, depthwise kernels — set to exactly zero. They then have the
    lowest magnitude importance, and since no consumer reads them, removing them must reproduce
    this model's outputs."""
    from onnxfuse import pipeline
    from onnxfuse.graph.convert import export_model
    from onnxfuse.planning.counts import keep_count

    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(fold_bn=fold_bn), model), stop_after="analyze")
    tensors = ctx.model.graph.tensors()
    for group in ctx.model.analysis.prunable:
        dropped = np.arange(group.width - keep_count(group.width, sparsity))
        for member in group.members:
            if not member.scored:
                continue
            values = np.array(tensors[member.tensor].values)
            moved = np.moveaxis(values, member.axis, 0)
            moved[group.positions[member.space][dropped].ravel()] = 0
            tensors[member.tensor].values = values
    return export_model(ctx.model.graph, model)


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """`onnxfuse ARGV` in-process: (exit code, stdout, stderr)."""
    from onnxfuse.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
