from onnxfuse.normalize import import_graph, infer_shapes, normalize


class Normalize:
    """Constant nodes → initializers, Identity removal, bias-Add and BN folding, shape inference."""

    name = "normalize"

    def run(self, ctx):
        graph = infer_shapes(import_graph(ctx.original, ctx.weights_dir), ctx.original)  # shapes let Shape ops fold
        notes = normalize(graph, fold_bn=ctx.options.fold_bn)
        ctx.graph = infer_shapes(graph, ctx.original)
        ctx.report["normalize"] = notes
        return ctx
