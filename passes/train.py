import dataclasses
from pathlib import Path

from onnxfuse.log import warning
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.training import load_finetune


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
        model.result, ctx.report["train"] = finetune(
            model.original, model.result, dataclasses.replace(opts.train, train_steps=steps), device=opts.device,
            seed=opts.seed, labels_key=opts.labels_key, preprocess=opts.preprocess, teacher_source=model.original_path)

