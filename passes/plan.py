from onnxfuse.allocate import LEVELS, allocate, best_plan, importance_damage, measure_sensitivity
from onnxfuse.errors import OnnxfuseError
from onnxfuse.latency import LatencyModel, LatencyProbe, measure_latency_savings, pruned_probe
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
        elif opts.target_latency is not None:
            counts = self._latency(ctx)
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

    @staticmethod
    def _latency(ctx, corrections: int = 3):
        """Per-group latency savings measured in ONNX Runtime, damage measured on --calib (else the
        importance removed), greedy allocation; the measured result corrects the goal when it misses."""
        opts, groups = ctx.options, ctx.analysis.prunable
        probe = LatencyProbe(ctx.original, opts.device, opts.latency_batch, ctx.input_shapes, ctx.model_source)
        savings = measure_latency_savings(ctx, probe)
        damage = measure_sensitivity(ctx) if ctx.calib is not None else importance_damage(
            groups, ctx.scores, LEVELS, opts.round_to)

        ratio_of = LatencyModel(ctx.analysis, savings, opts.round_to).ratio

        goal, tried = opts.target_latency, []
        for _ in range(corrections + 1):
            try:
                counts = allocate(ctx.analysis, damage, goal, opts.round_to, ratio_of, what="latency")
            except OnnxfuseError:
                if not tried:
                    raise
                break
            reached = probe.ratio(pruned_probe(ctx, counts))
            tried.append((reached, goal, counts))
            ctx.log(f"latency: allocation for {goal:.3f} (estimated {ratio_of(counts):.3f}) measures {reached:.3f}")
            if reached <= opts.target_latency:
                break
            goal *= opts.target_latency / reached
        reached, goal, counts = next((t for t in tried if t[0] <= opts.target_latency), tried[-1])
        ctx.report["latency_plan"] = {"goal": round(goal, 4), "estimated": round(ratio_of(counts), 4),
                                      "probe_reached": round(reached, 4),
                                      "savings": {str(g): [round(float(x), 4) for x in v] for g, v in savings.items()}}
        return counts
