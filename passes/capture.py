import onnx_graphsurgeon as gs

from onnxfuse.capture import activation_space, channel_stats, sampled_activations
from onnxfuse.errors import OnnxfuseError
from onnxfuse.normalize import runnable


class Capture:
    """With calibration data: the activations that activation importance and activation OT
    features need, read from the normalised original model in one pass per kind."""

    name = "capture"

    def run(self, ctx):
        opts = ctx.options
        wants_activity = opts.importance == "act" and not ctx.activity
        wants_features = opts.method == "fuse" and opts.fusion.features != "weights" and not ctx.activations
        if not (wants_activity or wants_features):
            return ctx
        if ctx.calib is None:
            raise OnnxfuseError("activation importance and activation OT features need calibration data (--calib)")
        model = runnable(ctx.graph, ctx.original)
        variables = {name for name, t in ctx.graph.tensors().items() if isinstance(t, gs.Variable)}
        spaces = {group.id: activation_space(group, variables) for group in ctx.analysis.prunable}
        tensors = {space[0]: space[1] for space in spaces.values()}
        if wants_activity:
            stats = channel_stats(model, ctx.calib, tensors, label="activation statistics")
            for group in ctx.analysis.prunable:
                space = spaces[group.id]
                ctx.activity[group.id] = stats[space[0]].abs_mean[group.positions[space]].mean(axis=1)
        if wants_features:
            acts = sampled_activations(model, ctx.calib, tensors, seed=opts.seed)
            for group in ctx.analysis.prunable:
                space = spaces[group.id]
                positions = group.positions[space]  # (width, k): a channel's k copies side by side
                ctx.activations[group.id] = acts[space[0]][positions].reshape(group.width, -1)
        return ctx
