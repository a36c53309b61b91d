"""The recipe behind every option left at "auto": what measured best on the zoo and on the
third-party models of the tests (benchmarks/defaults.py writes the measurement into
benchmarks/RESULTS.md, section "Defaults"; docs/defaults.md explains the choice).

Without calibration data: L1 pruning, no repair. With `--calib`: pruning, L1 or signal importance
chosen per group by held-out damage (`select`), the cross-validated least-squares repair, and with
a MAC budget the sensitivity allocation; when `--method fuse` is asked for with data, the OT cost
from weights and activations and the `reference` normalisation (the repair sets each channel's
scale). Pruning beat fusion once the refit follows it; neither L1 nor signal wins on every model,
the measured choice between them matches the better one (benchmarks/RESULTS.md, "Defaults" and
"Importance").
"""

from __future__ import annotations

AUTO = "auto"

DATA_FREE = {"method": "prune", "importance": "l1", "allocate": "uniform", "repair": "none",
             "normalization": "rescale", "features": "weights"}
CALIBRATED = {"method": "prune", "importance": "select", "allocate": "sensitivity", "repair": "lsq",
              "normalization": "reference", "features": "both"}
FUSION_FIELDS = ("normalization", "features")


def recipe(with_calibration: bool, with_mac_budget: bool) -> dict[str, str]:
    """The value of each "auto" option."""
    chosen = dict(CALIBRATED if with_calibration else DATA_FREE)
    if not with_mac_budget:  # allocation needs a budget to share out; a plain sparsity is uniform
        chosen["allocate"] = "uniform"
    return chosen


def auto_layernorm_width(options) -> str:
    """Groups a LayerNorm normalises over (a transformer's hidden width) stay whole when pruning
    without calibration data: shrinking them rescales every kept channel and nothing repairs it.
    On the zoo ViT, data-free pruning keeps 74.8 % accuracy at half the MACs with them whole against
    45.7 % with them shrunk (36.4 against 12.0 % at a quarter); data-free fusion does better shrinking
    them at half (58.8 against 38.3 %), and with --calib the repair refits them (benchmarks/RESULTS.md,
    "Transformers")."""
    return "keep" if not options.calib and options.method == "prune" else "shrink"


def auto_help(name: str) -> str:
    """What "auto" means for option `name`, for its --help."""
    with_data, without = CALIBRATED[name], DATA_FREE[name]
    return f"auto: {with_data}" if with_data == without else f"auto: {with_data} with --calib, else {without}"


def auto_fields(options) -> dict[str, str]:
    """The options left at "auto", with the value the recipe gives each."""
    budget = options.target_macs is not None or options.quality_target
    values = recipe(bool(options.calib), budget and options.target_latency is None)
    current = {name: getattr(options.fusion if name in FUSION_FIELDS else options, name) for name in values}
    return {name: values[name] for name, value in current.items() if value == AUTO}


def reported_defaults(options) -> dict[str, str]:
    """auto_fields without the fusion options when the method is not fuse (they are unused then)."""
    chosen = auto_fields(options)
    method = chosen.get("method", options.method)
    return {k: v for k, v in chosen.items() if method == "fuse" or k not in FUSION_FIELDS}
