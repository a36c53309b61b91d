import dataclasses

from onnxfuse.errors import OnnxfuseError
from onnxfuse.graph.convert import runnable, update_constants
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.training import load_finetune, load_training

REMOVAL_RATIO = 1e-3  # dropped rows' norm against the kept rows', at most, before they are removed


@register_pass
class TPP(Pass):
    """Method tpp: train the dense graph with TPP's regularisers on the channels the plan drops
    until they are exactly zero (onnxfuse/training/tpp.py); the fuse pass then removes them."""

    name = "tpp"
    requires = ("model.graph", "model.analysis", "decisions.keep")

    def run(self, ctx):
        opts, model = ctx.options, ctx.model
        teacher, path = model.teacher
        finetune, tpp = load_finetune(), load_training("tpp")
        update, stabilise = opts.tpp_phases
        order = {node.name: i for i, node in enumerate(model.graph.nodes)}
        groups = tpp.drops_of(model.analysis, ctx.decisions.keep, order)
        dense = runnable(model.graph, model.original)
        made = []  # the hooks finetune builds around its view

        def hooks(view):
            made.append(tpp.TPPHooks(view, groups, update, stabilise, opts.train.peak_lr))
            return made[-1]

        options = dataclasses.replace(opts.train, train_steps=update + stabilise)
        trained, report = finetune(teacher, dense, options, device=opts.device, seed=opts.seed,
                                   labels_key=opts.labels_key, preprocess=opts.preprocess,
                                   teacher_source=path, hooks=hooks, phase=ctx.phase("tpp"))
        ratio = tpp.drop_norm_ratio(made[-1].view, groups)
        if ratio > REMOVAL_RATIO:
            raise OnnxfuseError(f"tpp: the dropped channels did not reach zero (norm ratio {ratio:.3g}); "
                                "nothing written")
        update_constants(model.graph, trained)
        ctx.trained_steps = update + stabilise
        ctx.report["tpp"] = {**report, "update_steps": update, "stabilise_steps": stabilise,
                             "groups": len(groups), "dropped_norm_ratio": ratio}
