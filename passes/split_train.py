import dataclasses

import numpy as np
import onnx
from onnx.external_data_helper import load_external_data_for_model

from onnxfuse.log import info
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.pipeline.merge import merge_models
from onnxfuse.pipeline.options import Options
from onnxfuse.scaleout import run_tasks
from onnxfuse.training import load_training
from onnxfuse.training.data import load_train_data


@register_pass
class SplitTrain(Pass):
    """Intra-Fusion's split-data Prune-and-Fuse (`--split-data K`): the training inputs split into K
    disjoint parts; the emitted student distilled on each part apart (K students, half of
    --train-steps shared out among them; Ray tasks with --ray); the K students merged with OT
    (methods/merge.py); the train pass then distils the merged student on all inputs for the other half."""

    name = "split_train"
    requires = ("model.original", "model.result")

    def run(self, ctx):
        opts, model = ctx.options, ctx.model
        parts = opts.split_data
        steps = max(1, opts.train.train_steps // (2 * parts))
        teacher, _ = model.teacher
        data = load_train_data(opts.train.train_data, teacher, opts.labels_key, opts.preprocess)
        order = np.random.default_rng([opts.seed, parts]).permutation(len(data))
        task = load_training("split").train_student
        threads = load_training("split").torch.get_num_threads()
        options = dataclasses.replace(opts.train, train_steps=steps)
        teacher_bytes, student_bytes = _serialised(teacher, model.weights_dir), model.result.SerializeToString()
        arguments = [(teacher_bytes, student_bytes, _part(data, np.sort(indices), opts.labels_key), options,
                      opts.device, opts.seed + k, opts.labels_key, ctx.phase(f"part{k}"), threads)
                     for k, indices in enumerate(np.array_split(order, parts))]
        info(f"split-data: {parts} students, {steps} steps each" + (f", as Ray tasks ({opts.ray})" if opts.ray else ""))
        results = run_tasks(task, arguments, opts.ray, cpus=threads)
        students = [onnx.load_from_string(trained) for trained, _ in results]
        model.result, merge_report = _merge(students, ctx)
        ctx.trained_steps += steps * parts
        ctx.report["split_data"] = {"parts": parts, "steps_per_part": steps, "ray": opts.ray,
                                    "students": [report for _, report in results], "merge": merge_report}


def _part(data, indices: np.ndarray, labels_key: str) -> dict[str, np.ndarray]:
    arrays = {name: np.asarray(values[indices]) for name, values in data.feeds.items()}
    if data.labels is not None:
        arrays[labels_key] = data.labels[indices]
    return arrays


def _serialised(teacher: onnx.ModelProto, weights_dir: str | None) -> bytes:
    if weights_dir is None:
        return teacher.SerializeToString()
    copy = onnx.ModelProto()
    copy.CopyFrom(teacher)
    load_external_data_for_model(copy, weights_dir)
    return copy.SerializeToString()


def _merge(students, ctx):
    calib = ctx.calibration.calib
    options = Options(seed=ctx.options.seed, fold_bn=ctx.options.fold_bn)
    return merge_models([(f"student {k + 1}", s) for k, s in enumerate(students)], options,
                        "activations" if calib is not None else "weights", None, "first", calib=calib)
