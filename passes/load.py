from pathlib import Path

import onnx

from onnxfuse.calibration.data import (
    has_dynamic_dims,
    load_calibration,
    load_npz,
    parse_input_shapes,
)
from onnxfuse.errors import OnnxfuseError
from onnxfuse.graph.io import check_model, has_external_data, load_model
from onnxfuse.log import warning
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.runtime.sessions import assumed_input_shapes
from onnxfuse.training import load_finetune
from onnxfuse.training.data import check_train_data


@register_pass
class Load(Pass):
    """Read the model (path or ModelProto), the calibration data (.npz or image folder, at most
    calib_samples) and the validation data; check the training data. Weights stored as external
    data stay in their files: the graph reads them from there (normalize), one at a time."""

    name = "load"
    requires = ("model.source",)
    provides = ("model.original",)

    def run(self, ctx):
        model, opts = ctx.model, ctx.options
        if isinstance(model.source, onnx.ModelProto):
            check_model(model.source)
            model.original = onnx.ModelProto()
            model.original.CopyFrom(model.source)  # the graph tools write into the protos they import
        else:
            model.original = load_model(model.source, external_data=False)
            if has_external_data(model.original):
                model.weights_dir = str(Path(model.source).parent)
        calibration = ctx.calibration
        if opts.calib:
            calibration.calib = load_calibration(opts.calib, model.original, opts.calib_samples, opts.seed,
                                                 opts.preprocess, opts.labels_key)
        if opts.data:
            calibration.data = load_npz(opts.data, model.original, opts.labels_key)
            if opts.max_accuracy_drop is not None and calibration.data.labels is None:
                raise OnnxfuseError(f"{opts.data}: max-accuracy-drop needs labels (array {opts.labels_key!r})")
        if opts.train.train_data:  # before the long work: torch there, the data fits
            load_finetune()
            check_train_data(opts.train, model.original, opts.labels_key)
        model.input_shapes = parse_input_shapes(list(opts.input_shape), model.original)
        example = calibration.data or calibration.calib
        if example is not None and has_dynamic_dims(model.original):
            for name, array in example.feeds.items():
                model.input_shapes.setdefault(name, [1, *array.shape[1:]])
        assumed = assumed_input_shapes(model.original, model.input_shapes, model.model_source)
        if assumed:
            model.input_shapes.update(assumed)
            ctx.report["assumed_input_shapes"] = assumed
            warning("note: dynamic input dimensions; MACs and random validation at " + ", ".join(
                f"{name} {'x'.join(map(str, dims))}" for name, dims in assumed.items()) + " (--input-shape to choose)")
