"""Latency targets: per-group latency savings measured in ONNX Runtime, and a model of the latency
after shrinking fitted to them."""

from __future__ import annotations

import numpy as np
import onnx

from ..calibration.data import random_inputs
from ..log import info, progress
from ..runtime.sessions import session
from ..runtime.timing import Timer, default_threads, time_interleaved
from .counts import estimated_mac_ratio, keep_count, node_factors, node_spaces, unit_multiple

LATENCY_LEVELS = (0.25, 0.5, 0.75)


PROBE_RUNS = 15


class LatencyProbe:
    """Latency of models relative to `original`, each timed interleaved with it."""

    def __init__(self, original: onnx.ModelProto, device: str, batch: int, shapes: dict | None = None,
                 source: str | onnx.ModelProto | None = None):
        """`source`: where ONNX Runtime reads the original (its file when the weights stayed there)."""
        self.device, self.threads = device, default_threads()
        self.feeds = random_inputs(original, batch=batch, shapes=shapes).feeds
        self.sess = session(source if source is not None else original, device, threads=self.threads)
        self.base = Timer(self.sess, self.feeds)

    def ratio(self, model: onnx.ModelProto, runs: int = PROBE_RUNS) -> float:
        other = Timer(session(model, self.device, threads=self.threads), self.feeds)
        base, new = time_interleaved([self.base, other], runs, warmup=2)
        return float(np.median(new) / np.median(base))


def measure_latency_savings(analysis, probe: LatencyProbe, pruned, levels=LATENCY_LEVELS) -> dict[int, np.ndarray]:
    """Fraction of the original latency saved by each group shrunk alone at each level
    (`pruned(sparsity=, only_groups=)`: the model with that group pruned, planning/probes.py)."""
    groups = analysis.prunable
    batch = len(next(iter(probe.feeds.values())))
    info(f"latency: timing {len(groups)} groups x {len(levels)} sparsities at batch {batch} "
         f"on {probe.sess.get_providers()[0]}")
    return {group.id: np.array([1 - probe.ratio(pruned(sparsity=s, only_groups=(group.id,))) for s in levels])
            for group in progress(groups, desc="latency")}


class LatencyModel:
    """Latency after / before from the new widths. Each weighted node's time scales with its MACs
    (so shrinking both sides of a conv compounds, as it does), weighted by a latency-per-MAC
    efficiency fitted per group from its one-group timings: a group whose MACs sit in
    memory-bound or badly blocked layers saves less time per MAC."""

    def __init__(self, analysis, savings: dict[int, np.ndarray], round_to: int = 1, levels=LATENCY_LEVELS):
        self.analysis = analysis
        self.total = sum(analysis.node_macs.values()) or 1
        efficiency = {}
        for g in analysis.prunable:
            macs_saved = np.array([1 - estimated_mac_ratio(analysis, {g.id: keep_count(g.width, s,
                                                                                       unit_multiple(g, round_to))})
                                   for s in levels])
            fit = float(savings[g.id] @ macs_saved / max(macs_saved @ macs_saved, 1e-12))
            efficiency.update({space: min(max(fit, 0.0), 3.0) for space in g.positions})
        self.weight = {}
        for node, spaces in node_spaces(analysis).items():
            known = [efficiency[s] for s in spaces if s in efficiency]
            self.weight[node] = float(np.mean(known)) if known else 0.0

    def ratio(self, counts: dict[int, int]) -> float:
        factors = node_factors(self.analysis, counts)
        saved = sum(macs * self.weight.get(n, 0.0) * (1 - factors.get(n, 1.0))
                    for n, macs in self.analysis.node_macs.items())
        return max(1.0 - saved / self.total, 0.0)
