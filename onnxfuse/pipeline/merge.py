"""Model fusion as a pipeline (api.merge and split_train): the front of the pipeline (load,
normalize, analyze) on every model, the others aligned to the anchor and averaged into it
(methods/merge.py), the anchor emitted. With validation data, each model, the plain average and the
merged model are scored."""

from __future__ import annotations

import onnx

from ..calibration.data import Dataset
from ..errors import OnnxfuseError
from ..graph.convert import runnable
from ..graph.metrics import count_params
from ..methods import merge as fusion
from ..runtime.sessions import run as run_session
from ..runtime.sessions import session
from .context import Context
from .contract import PASSES
from .options import Options
from .steps import run_passes

FRONT = ("load", "normalize", "analyze")


def merge_models(sources: list[tuple[str, str | onnx.ModelProto]], options: Options, align: str,
                 weights: list[float] | None, anchor: str, calib: Dataset | None = None,
                 repair: str = "auto") -> tuple[onnx.ModelProto, dict]:
    """`calib`: calibration data already in memory, instead of loading `options.calib`. `repair`:
    stats (REPAIR after averaging, needs calibration data), none, or auto (stats when there is
    calibration data)."""
    if len(sources) < 2:
        raise OnnxfuseError("merge needs two or more models")
    if align not in fusion.ALIGNS or anchor not in fusion.ANCHORS or repair not in fusion.REPAIRS:
        raise OnnxfuseError(f"align must be one of {', '.join(fusion.ALIGNS)}, anchor one of "
                            f"{', '.join(fusion.ANCHORS)} and repair one of {', '.join(fusion.REPAIRS)}")
    share = fusion.model_weights(weights, len(sources))
    contexts = [_analysed(options, source) for _, source in sources]
    members = [fusion.Member(name, c.model.graph, c.model.analysis, c.model.original)
               for (name, _), c in zip(sources, contexts)]
    first = 0 if anchor == "first" else min(range(len(members)), key=lambda i: count_params(members[i].graph))
    order = [first] + [i for i in range(len(members)) if i != first]
    lead, others, share = members[first], [members[i] for i in order[1:]], [share[i] for i in order]
    for other in others:
        fusion.check_same_architecture(lead, other)
    if not lead.analysis.prunable:
        raise OnnxfuseError(f"{lead.name}: no channel group can be aligned (all frozen); see `onnxfuse inspect`")
    ctx = contexts[first]
    if calib is not None:
        ctx.calibration.calib = calib
    plain = _plain_average(lead, others, share) if options.data else None
    calib = ctx.calibration.calib
    if repair == "stats" and calib is None:
        raise OnnxfuseError("merge repair stats measures channel statistics: give --calib")
    stayed = {other.name: fusion.align(lead, other, align, calib, options.seed) for other in others}
    targets = fusion.producer_targets(lead, others, share, calib) if repair != "none" and calib else None
    averaged = fusion.average_into(lead, others, share)
    renormalised = fusion.renormalise(lead, targets, calib) if targets else []
    PASSES.get("emit")().run(ctx)
    report = {"anchor": lead.name, "align": align, "weights": share, "constants_averaged": averaged,
              "repair": "stats" if renormalised else "none", "producers_renormalised": len(renormalised),
              "groups_aligned": len(lead.analysis.prunable),
              "groups_frozen": len(lead.analysis.groups) - len(lead.analysis.prunable),
              "unmoved_share": {name: round(sum(v.values()) / max(len(v), 1), 4) for name, v in stayed.items()}}
    if options.data:
        scored = [(m.name, m.original) for m in [lead, *others]] + [("plain average", plain)]
        report["scores"] = _scores(ctx.calibration.data, [*scored, ("merged", ctx.model.result)])
    return ctx.model.result, report


def _analysed(options: Options, source: str | onnx.ModelProto) -> Context:
    ctx = Context.for_model(options.resolved(), source)
    return run_passes(ctx, [PASSES.get(name)() for name in FRONT])


def _plain_average(lead, others, share) -> onnx.ModelProto:
    """The models averaged without alignment (the baseline merging must beat)."""
    copies = [fusion.Member(m.name, m.graph.copy(), m.analysis, m.original) for m in [lead, *others]]
    fusion.average_into(copies[0], copies[1:], share)
    return runnable(copies[0].graph, lead.original)


def _scores(data, models: list[tuple[str, onnx.ModelProto]]) -> dict:
    """Accuracy on the labels, else top-1 agreement with the first (the anchor)."""
    anchor_predictions = None
    scores = {}
    for name, model in models:
        predictions = run_session(session(model, "cpu"), data, 256)[0].argmax(1)
        if anchor_predictions is None:
            anchor_predictions = predictions
        want = data.labels if data.labels is not None else anchor_predictions
        scores[name] = round(float((predictions == want).mean()), 4)
    scores["metric"] = "accuracy" if data.labels is not None else f"top-1 agreement with {models[0][0]}"
    return scores
