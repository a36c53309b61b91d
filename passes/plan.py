from onnxfuse.errors import OnnxfuseError
from onnxfuse.log import info
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.planning.counts import estimated_mac_ratio, keep_counts, solve_sparsity_for_macs, top_k
from onnxfuse.planning.latency import LatencyModel, LatencyProbe, measure_latency_savings
from onnxfuse.planning.quality import quality_of, smallest_ratio
from onnxfuse.planning.sensitivity import (
    LEVELS,
    allocate,
    best_plan,
    importance_damage,
    measure_sensitivity,
    neighbour_plans,
)
from onnxfuse.runtime.compare import compare


@register_pass
class Plan(Pass):
    """How many channels each group keeps (uniform or global ranking, round-to, MAC or latency
    target, sensitivity allocation) and which (the top-k by importance)."""

    name = "plan"
    requires = ("model.analysis", "decisions.scores")
    provides = ("decisions.keep",)

    def run(self, ctx):
        opts, decisions, analysis = ctx.options, ctx.decisions, ctx.model.analysis
        groups = analysis.prunable
        if decisions.only_groups is not None:
            groups = [g for g in groups if g.id in decisions.only_groups]
        if decisions.fixed_counts is not None:
            counts = decisions.fixed_counts
        elif opts.quality_target:
            counts = self._quality(ctx)
        elif opts.allocate == "sensitivity":
            counts = self._sensitivity(ctx)
        elif opts.target_latency is not None:
            counts = self._latency(ctx)
        elif opts.target_macs is not None:
            sparsity, counts = solve_sparsity_for_macs(analysis, decisions.scores, opts.target_macs, opts.round_to,
                                                       opts.global_ranking, opts.max_sparsity)
            ctx.report["solved_sparsity"] = round(sparsity, 4)
        else:
            counts = keep_counts(groups, decisions.scores, opts.sparsity, opts.round_to, opts.global_ranking,
                                 opts.max_sparsity)
        ctx.report["estimated_mac_ratio"] = round(estimated_mac_ratio(analysis, counts), 4)
        decisions.keep = {group.id: top_k(decisions.scores[group.id], counts[group.id]) for group in groups}

    @staticmethod
    def _sensitivity(ctx):
        opts, analysis = ctx.options, ctx.model.analysis
        damage = _sensitivity_table(ctx)
        greedy = allocate(analysis, damage, opts.target_macs, opts.round_to)
        _, uniform = solve_sparsity_for_macs(analysis, ctx.decisions.scores, opts.target_macs, opts.round_to)
        candidates = {"sensitivity": greedy, "uniform": uniform}
        trades = neighbour_plans(analysis, damage, [greedy, uniform], opts.target_macs, opts.round_to)
        candidates.update((f"trade {i}", plan) for i, plan in enumerate(trades, 1))
        chosen, counts, totals = best_plan(ctx.probes, candidates)
        ctx.report["sensitivity"] = {str(gid): {str(s): round(d, 6) for s, d in levels.items()}
                                     for gid, levels in damage.items()}
        ctx.report["allocation"] = {"chosen": chosen, "damage": {k: round(v, 6) for k, v in totals.items()}}
        info(f"allocation: {chosen} (calibration damage {', '.join(f'{k} {v:.4f}' for k, v in totals.items())})")
        return counts

    @staticmethod
    def _quality(ctx):
        """The smallest MAC ratio whose quality on --data meets the target (planning/quality.py)."""
        opts, model, analysis = ctx.options, ctx.model, ctx.model.analysis
        damage = _sensitivity_table(ctx) if opts.allocate == "sensitivity" else None

        def counts_for(ratio):
            if damage is not None:
                return allocate(analysis, damage, ratio, opts.round_to)
            return solve_sparsity_for_macs(analysis, ctx.decisions.scores, ratio, opts.round_to, opts.global_ranking,
                                           opts.max_sparsity)[1]

        def evaluate(ratio):
            try:
                counts = counts_for(ratio)
            except OnnxfuseError:
                return None  # below what the groups allow
            validation = compare(model.original, ctx.probes.compressed(counts), ctx.calibration.data, opts.device,
                                 original_path=model.original_path)
            point = quality_of(validation, opts.min_agreement, opts.max_accuracy_drop)
            info(f"quality search: {ratio:.3f} of the MACs: " + ", ".join(f"{k} {v}" for k, v in point.items()))
            return {"estimated_mac_ratio": round(estimated_mac_ratio(analysis, counts), 4), **point}

        what = (f"top-1 agreement {opts.min_agreement}" if opts.min_agreement is not None
                else f"accuracy drop {opts.max_accuracy_drop}")
        ratio, points = smallest_ratio(evaluate, what)
        ctx.report["quality_search"] = {"target": what, "chosen_mac_ratio": ratio, "points": points,
                                        "data": opts.data}
        return counts_for(ratio)

    @staticmethod
    def _latency(ctx, corrections: int = 3):
        """Per-group latency savings measured in ONNX Runtime, damage measured on --calib (else the
        importance removed), greedy allocation; the measured result corrects the goal when it misses."""
        opts, model, analysis = ctx.options, ctx.model, ctx.model.analysis
        probe = LatencyProbe(model.original, opts.device, opts.latency_batch, model.input_shapes, model.model_source)
        savings = measure_latency_savings(analysis, probe, ctx.probes.pruned)
        damage = _sensitivity_table(ctx) if ctx.calibration.calib is not None else \
            importance_damage(analysis.prunable, ctx.decisions.scores, LEVELS, opts.round_to)
        ratio_of = LatencyModel(analysis, savings, opts.round_to).ratio

        goal, tried = opts.target_latency, []
        for _ in range(corrections + 1):
            try:
                counts = allocate(analysis, damage, goal, opts.round_to, ratio_of, what="latency")
            except OnnxfuseError:
                if not tried:
                    raise
                break
            reached = probe.ratio(ctx.probes.pruned(fixed_counts=counts))
            tried.append((reached, goal, counts))
            info(f"latency: allocation for {goal:.3f} (estimated {ratio_of(counts):.3f}) measures {reached:.3f}")
            if reached <= opts.target_latency:
                break
            goal *= opts.target_latency / reached
        reached, goal, counts = next((t for t in tried if t[0] <= opts.target_latency), tried[-1])
        ctx.report["latency_plan"] = {"goal": round(goal, 4), "estimated": round(ratio_of(counts), 4),
                                      "probe_reached": round(reached, 4),
                                      "savings": {str(g): [round(float(x), 4) for x in v] for g, v in savings.items()}}
        return counts


def _sensitivity_table(ctx) -> dict:
    """The damage of each group alone at each level: measured by choose_importance already, or now."""
    return ctx.decisions.sensitivity or measure_sensitivity(ctx.model.analysis, ctx.probes)
