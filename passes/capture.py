import onnx_graphsurgeon as gs

from onnxfuse.calibration.capture import activation_space, channel_stats, sampled_activations
from onnxfuse.calibration.estimate import estimated_stats
from onnxfuse.graph.convert import runnable
from onnxfuse.methods import METHODS
from onnxfuse.methods.importance import IMPORTANCES
from onnxfuse.pipeline.contract import Pass, register_pass


@register_pass
class Capture(Pass):
    """With calibration data: the activations that the importance and the method declare they need
    (mean |activation| per channel, sampled activations), read from the normalised original model in
    one pass per kind. Without data, an importance that takes estimates gets the mean |activation|
    estimated from the weights."""

    name = "capture"
    requires = ("model.graph", "model.analysis")

    def run(self, ctx):
        opts, cal, model = ctx.options, ctx.calibration, ctx.model
        wants_activity = IMPORTANCES.get(opts.importance).needs_activity and not cal.activity
        wants_features = METHODS.get(opts.method).needs_activations(opts) and not cal.activations
        if not (wants_activity or wants_features):
            return
        runnable_model = runnable(model.graph, model.original)
        variables = {name for name, t in model.graph.tensors().items() if isinstance(t, gs.Variable)}
        spaces = {group.id: activation_space(group, variables) for group in model.analysis.prunable}
        tensors = {space[0]: space[1] for space in spaces.values()}
        if wants_activity:
            stats = (channel_stats(runnable_model, cal.calib, tensors, label="activation statistics") if cal.calib
                     else estimated_stats(model.graph, tensors))
            for group in model.analysis.prunable:
                space = spaces[group.id]
                if space[0] in stats:
                    cal.activity[group.id] = stats[space[0]].abs_mean[group.positions[space]].mean(axis=1)
        if wants_features:
            acts = sampled_activations(runnable_model, cal.calib, tensors, seed=opts.seed)
            for group in model.analysis.prunable:
                space = spaces[group.id]
                positions = group.positions[space]  # (width, k): a channel's k copies side by side
                cal.activations[group.id] = acts[space[0]][positions].reshape(group.width, -1)
