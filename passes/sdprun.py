import dataclasses

import numpy as np

from onnxfuse.graph.convert import runnable, update_constants
from onnxfuse.methods.importance import score_group
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.planning.counts import top_k
from onnxfuse.training import load_finetune, load_training

TRAIN_SHARE = 0.7  # of --train-steps, as TPP's two phases; the rest distils the pruned model


@register_pass
class SDPrun(Pass):
    """Method sdprun: gRDA with a group soft threshold from the trained weights (onnxfuse/training/
    sdprun.py), one threshold constant per group unless --sdprun-c; channels that reached zero go,
    and the planned count is met by importance on the
    trained weights among the others (the prune selection removes them after this pass)."""

    name = "sdprun"
    requires = ("model.graph", "model.analysis", "decisions.keep")

    def run(self, ctx):
        opts, model, decisions = ctx.options, ctx.model, ctx.decisions
        teacher, path = model.teacher
        finetune, sdprun = load_finetune(), load_training("sdprun")
        steps = max(1, round(TRAIN_SHARE * opts.train.train_steps))
        planned = [g for g in model.analysis.prunable if g.id in decisions.keep]
        slices = {g.id: s for g, s in zip(model.analysis.prunable, sdprun.channel_groups(model.analysis))}
        dropped = [g.width - len(decisions.keep[g.id]) for g in planned]
        made = []  # the hooks finetune builds around its view

        def hooks(view):
            made.append(sdprun.SDPrunHooks(view, [slices[g.id] for g in planned], opts.train.peak_lr, opts.sdprun_c,
                                           opts.sdprun_mu, dropped, steps))
            return made[-1]

        trained, report = finetune(teacher, runnable(model.graph, model.original),
                                   dataclasses.replace(opts.train, train_steps=steps), device=opts.device,
                                   seed=opts.seed, labels_key=opts.labels_key, preprocess=opts.preprocess,
                                   teacher_source=path, hooks=hooks, phase=ctx.phase("sdprun"))
        update_constants(model.graph, trained)
        tensors, zeroed = model.graph.tensors(), 0
        for group in planned:
            gone = sdprun.zeroed_channels(made[-1].view, slices[group.id])
            zeroed += len(gone)
            scores = score_group(opts.importance, group, tensors, opts.seed, ctx.calibration.activity.get(group.id))
            decisions.scores[group.id] = scores  # the importance of what training left
            decisions.keep[group.id] = _kept(scores, gone, len(decisions.keep[group.id]))
        ctx.trained_steps = steps
        ctx.report["sdprun"] = {**report, "c": made[-1].c, "mu": opts.sdprun_mu, "planned_dropped": sum(dropped),
                                "zeroed": zeroed}


def _kept(scores: np.ndarray, zeroed: np.ndarray, count: int) -> np.ndarray:
    """`count` channels (fewer when more reached zero, at least one) by importance among the non-zero."""
    alive = np.setdiff1d(np.arange(len(scores)), zeroed)
    if not len(alive):
        return top_k(scores, 1)
    return alive[top_k(scores[alive], min(count, len(alive)))]
