import dataclasses

import numpy as np

from onnxfuse import scratch
from onnxfuse.log import info
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.training import load_finetune
from onnxfuse.training.data import load_train_data


@register_pass
class SplitTrain(Pass):
    """Intra-Fusion's split-data Prune-and-Fuse (`--split-data K`): the training inputs split into K
    disjoint parts; the emitted student distilled on each part apart (K students, half of
    --train-steps shared out among them); the K students merged with OT (methods/merge.py); the
    train pass then distils the merged student on all inputs for the other half."""

    name = "split_train"
    requires = ("model.original", "model.result")

    def run(self, ctx):
        opts, model = ctx.options, ctx.model
        parts = opts.split_data
        steps = max(1, opts.train.train_steps // (2 * parts))
        finetune = load_finetune()
        teacher, path = model.teacher
        data = load_train_data(opts.train.train_data, teacher, opts.labels_key, opts.preprocess)
        order = np.random.default_rng([opts.seed, parts]).permutation(len(data))
        students, reports = [], []
        with scratch.run():
            for k, indices in enumerate(np.array_split(order, parts)):
                part = scratch.directory() / f"part{k}.npz"
                indices = np.sort(indices)
                arrays = {name: np.asarray(values[indices]) for name, values in data.feeds.items()}
                if data.labels is not None:
                    arrays[opts.labels_key] = data.labels[indices]
                np.savez(part, **arrays)
                info(f"split-data: student {k + 1}/{parts} on {len(indices)} samples")
                options = dataclasses.replace(opts.train, train_data=str(part), train_steps=steps)
                student, report = finetune(teacher, model.result, options, device=opts.device, seed=opts.seed + k,
                                           labels_key=opts.labels_key, preprocess=opts.preprocess,
                                           teacher_source=path, phase=ctx.phase(f"part{k}"))
                students.append(student)
                reports.append(report)
            merged, merge_report = _merge(students, ctx)
        model.result = merged
        ctx.trained_steps += steps * parts
        ctx.report["split_data"] = {"parts": parts, "steps_per_part": steps, "students": reports,
                                    "merge": merge_report}


def _merge(students, ctx):
    from onnxfuse.api import merge

    calib = ctx.calibration.calib
    align = "activations" if calib is not None else "weights"
    with scratch.run():
        calib_path = None
        if calib is not None:
            calib_path = scratch.directory() / "merge_calib.npz"
            np.savez(calib_path, **calib.feeds)
        return merge(students, calib=str(calib_path) if calib_path else None, align=align,
                     calib_samples=len(calib) if calib is not None else 256, seed=ctx.options.seed)
