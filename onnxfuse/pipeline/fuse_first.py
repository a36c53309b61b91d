"""`--fuse-first B.onnx …` (Intra-Fusion's Fuse-and-Prune): the input model and the others (one
architecture, e.g. trained on different parts of the data) merged with OT (merge.py), the merged
model distilled on all of --train-data for half of --train-steps, then compressed as usual (the
train pass spends the other half). The teacher throughout is the ensemble of the input models (the
mean of their outputs): the knowledge the merge should keep."""

from __future__ import annotations

import dataclasses

from ..graph.ensemble import ensemble
from ..graph.io import load_model
from ..training import load_finetune
from .context import Context
from .merge import merge_models
from .options import Options
from .runner import run


def run_fuse_first(options: Options, source) -> Context:
    options.check()
    sources = [("input", source)] + [(path, path) for path in options.fuse_first]
    merge_options = Options(calib=options.calib, calib_samples=options.calib_samples, seed=options.seed,
                            fold_bn=options.fold_bn, labels_key=options.labels_key, preprocess=options.preprocess)
    merged, merge_report = merge_models(sources, merge_options, "activations" if options.calib else "weights",
                                        None, "first")
    teacher = ensemble([_loaded(s) for _, s in sources])
    first_half = options.train.train_steps // 2
    merged, train_report = load_finetune()(
        teacher, merged, dataclasses.replace(options.train, train_steps=first_half), device=options.device,
        seed=options.seed, labels_key=options.labels_key, preprocess=options.preprocess, phase="fuse-first")
    rest = dataclasses.replace(options, fuse_first=(),
                               train=dataclasses.replace(options.train,
                                                         train_steps=options.train.train_steps - first_half))
    ctx = Context.for_model(rest, merged)
    ctx.model.reference = (teacher, None)
    ctx = run(ctx)
    ctx.report["fuse_first"] = {"models": [name for name, _ in sources], "merge": merge_report,
                                "train": train_report}
    return ctx


def _loaded(source):
    return source if not isinstance(source, str) else load_model(source)
