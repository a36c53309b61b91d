from onnxfuse.log import info
from onnxfuse.pipeline.contract import Pass, register_pass
from onnxfuse.planning.counts import keep_counts, solve_sparsity_for_macs, top_k
from onnxfuse.planning.sensitivity import LEVELS, least_damage, measure_choices


@register_pass
class ChooseImportance(Pass):
    """--importance select: each group takes the candidate importance (L1 or signal) whose kept
    channels do the least damage on held-out calibration samples when the group alone is shrunk.
    Under a sensitivity allocation these probes are the allocation's own (its levels, the chosen
    importance's damages handed to plan); otherwise each group is probed at the planned sparsity."""

    name = "choose_importance"
    requires = ("model.analysis", "decisions.scores")
    provides = ("decisions.scores",)

    def run(self, ctx):
        decisions, analysis = ctx.decisions, ctx.model.analysis
        if not decisions.choices or not analysis.prunable:
            return
        levels = self.levels(ctx)
        tables = measure_choices(analysis, ctx.probes, decisions.choices, levels, self.same_damage(ctx))
        chosen = least_damage(tables)
        for gid, name in chosen.items():
            decisions.scores[gid] = decisions.choices[name][gid]
        if levels == LEVELS:
            decisions.sensitivity = {gid: tables[name][gid] for gid, name in chosen.items()}
        ctx.report["importance_choice"] = {str(gid): name for gid, name in chosen.items()}
        counts = {name: sum(1 for n in chosen.values() if n == name) for name in decisions.choices}
        info("importance by held-out damage: " + ", ".join(f"{name} for {n} group(s)" for name, n in counts.items()))

    @staticmethod
    def levels(ctx) -> tuple[float, ...]:
        """The allocation's levels where one runs (a MAC budget shared by sensitivity, a latency or
        quality target); else the one uniform sparsity the plan will use."""
        opts = ctx.options
        if opts.allocate == "sensitivity" or opts.target_latency is not None or opts.quality_target:
            return LEVELS
        if opts.target_macs is None:
            return (opts.sparsity,)
        sparsity, _ = solve_sparsity_for_macs(ctx.model.analysis, ctx.decisions.scores, opts.target_macs,
                                              opts.round_to, opts.global_ranking, opts.max_sparsity)
        return (sparsity,)

    @staticmethod
    def same_damage(ctx):
        """Pruning keeps channels and reads nothing else of the scores: a candidate that keeps the
        same channels as the first at a level damages the same. Fusion also weighs by the scores."""
        opts, decisions = ctx.options, ctx.decisions
        if opts.method != "prune" or opts.global_ranking:
            return None
        groups = {g.id: g for g in ctx.model.analysis.prunable}
        first = next(iter(decisions.choices.values()))

        def kept(gid, level, scores):
            count = keep_counts([groups[gid]], scores, level, opts.round_to, False, opts.max_sparsity)[gid]
            return top_k(scores[gid], count)

        return lambda gid, level, scores: (kept(gid, level, scores) == kept(gid, level, first)).all()
