import dataclasses
from pathlib import Path

from onnxfuse.graph.io import load_model
from onnxfuse.log import warning
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.training import load_finetune, load_training


@register_pass
class Train(Pass):
    """With --train-data: train the emitted model by distillation from the original (onnxfuse/training),
    for the steps a method's own training (tpp) left."""

    name = "train"
    requires = ("model.original", "model.result")

    def run(self, ctx):
        opts, model = ctx.options, ctx.model
        if not opts.train.train_data:
            return
        if not model.analysis.prunable:
            ctx.report["train"] = {"skipped": "nothing was compressed"}
            return
        same = opts.calib and Path(opts.train.train_data).resolve() == Path(opts.calib).resolve()
        if same and not opts.train.val_data:
            warning("warning: the held-out slice of --train-data holds calibration samples the repair was fit on, "
                    "which favours the untrained start; give --val-data held out from both")
        steps = opts.train.train_steps - ctx.trained_steps
        if steps < 1:
            return
        finetune = load_finetune()
        teacher, path = model.teacher
        stop = self._icp(ctx, steps) if opts.stop == "icp" else None
        model.result, ctx.report["train"] = finetune(
            teacher, model.result, dataclasses.replace(opts.train, train_steps=steps), device=opts.device,
            seed=opts.seed, labels_key=opts.labels_key, preprocess=opts.preprocess, teacher_source=path,
            hooks=(lambda view: stop) if stop else None, phase=ctx.phase("train"))
        if stop:
            ctx.report["train"]["icp"] = {"epsilon": stop.epsilon, "distances": stop.distances}

    @staticmethod
    def _icp(ctx, steps: int):
        """ICP's stop on the calibration inputs, against the original's information flow."""
        teacher, path = ctx.model.teacher
        dense = load_model(path) if path else teacher
        return load_training("icp").ICPStop(dense, ctx.model.result, ctx.calibration.calib, steps,
                                            ctx.options.icp_eps)

