from onnxfuse.methods.ot import warm_up_l1_kernel
from onnxfuse.pipeline.contract import Pass, register_pass


@register_pass
class WarmUpL1(Pass):
    """Start numba for fuse's L1 cost on a thread of its own, so that its start-up overlaps the
    passes before fuse (inserted after load by the fuse method)."""

    name = "warm_up_l1"
    requires = ("model.original",)

    def run(self, ctx):
        warm_up_l1_kernel(ctx.model.original, ctx.options.fusion.p)
