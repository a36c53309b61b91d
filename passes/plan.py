from onnxfuse.allocate import allocate, measure_sensitivity
from onnxfuse.planning import estimated_mac_ratio, keep_counts, solve_sparsity_for_macs, top_k


class Plan:
    """How many channels each group keeps (uniform or global ranking, round-to, MAC target) and
    which (the top-k by importance)."""

    name = "plan"

    def run(self, ctx):
        opts = ctx.options
        groups = ctx.analysis.prunable
        if opts.only_groups is not None:
            groups = [g for g in groups if g.id in opts.only_groups]
        if opts.allocate == "sensitivity":
            damage = measure_sensitivity(ctx)
            counts = allocate(ctx.analysis, damage, opts.target_macs, opts.round_to)
            ctx.report["sensitivity"] = {str(gid): {str(s): round(d, 6) for s, d in levels.items()}
                                         for gid, levels in damage.items()}
        elif opts.target_macs is not None:
            sparsity, counts = solve_sparsity_for_macs(ctx.analysis, ctx.scores, opts.target_macs, opts.round_to,
                                                       opts.global_ranking, opts.max_sparsity)
            ctx.report["solved_sparsity"] = round(sparsity, 4)
        else:
            counts = keep_counts(groups, ctx.scores, opts.sparsity, opts.round_to, opts.global_ranking,
                                 opts.max_sparsity)
        ctx.report["estimated_mac_ratio"] = round(estimated_mac_ratio(ctx.analysis, counts), 4)
        for group in groups:
            ctx.keep[group.id] = top_k(ctx.scores[group.id], counts[group.id])
        return ctx
