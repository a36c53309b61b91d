from onnxfuse.allocate import allocate, best_plan, measure_sensitivity
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
        if opts.fixed_counts is not None:
            counts = opts.fixed_counts
        elif opts.allocate == "sensitivity":
            counts = self._sensitivity(ctx)
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

    @staticmethod
    def _sensitivity(ctx):
        opts = ctx.options
        damage = measure_sensitivity(ctx)
        greedy = allocate(ctx.analysis, damage, opts.target_macs, opts.round_to)
        _, uniform = solve_sparsity_for_macs(ctx.analysis, ctx.scores, opts.target_macs, opts.round_to)
        chosen, counts, totals = best_plan(ctx, {"sensitivity": greedy, "uniform": uniform})
        ctx.report["sensitivity"] = {str(gid): {str(s): round(d, 6) for s, d in levels.items()}
                                     for gid, levels in damage.items()}
        ctx.report["allocation"] = {"chosen": chosen, "damage": {k: round(v, 6) for k, v in totals.items()}}
        ctx.log(f"allocation: {chosen} (calibration damage {', '.join(f'{k} {v:.4f}' for k, v in totals.items())})")
        return counts
