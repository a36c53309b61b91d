from onnxfuse.log import info
from onnxfuse.pipeline.contract import Pass, register_pass


@register_pass
class KeepWhole(Pass):
    """With --layernorm-width keep (the default when pruning without --calib), the groups a LayerNorm
    normalises over are frozen before anything is scored or planned (pipeline/defaults.py says why)."""

    name = "keep_whole"
    requires = ("model.analysis",)

    def run(self, ctx):
        if ctx.options.layernorm_width != "keep":
            return
        held = [g for g in ctx.model.analysis.prunable if g.normalised]
        for group in held:
            group.frozen = (f"normalised by {len(group.normalised)} normalisation node(s), kept whole "
                            "(--layernorm-width keep, the default when pruning without --calib)")
        if held:
            ctx.report["kept_whole"] = [g.id for g in held]
            info(f"kept whole: {len(held)} group(s) a LayerNorm normalises over (width "
                 f"{', '.join(str(g.width) for g in held)}); --layernorm-width shrink shrinks them")
