"""What a person reads after a run: the group table, and the few lines that sum up a compress report."""

from __future__ import annotations

import numpy as np

from ..analysis.channels import Analysis
from ..runtime.timing import cpu_channel_block


def group_rows(analysis: Analysis, total_macs: int, keep: dict | None = None) -> list[dict]:
    rows = []
    for group in analysis.groups:
        row = {
            "id": group.id,
            "width": group.width,
            "producers": group.nodes("producer"),
            "consumers": group.nodes("consumer"),
            "mac_share": round(group.macs / total_macs, 4) if total_macs else 0.0,
            "prunable": group.prunable,
        }
        if group.frozen:
            row["frozen"] = group.frozen
        if group.normalised:
            row["normalised"] = list(group.normalised)
        if keep is not None and group.id in keep:
            row["kept"] = len(keep[group.id])
        rows.append(row)
    return rows


def format_groups(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        state = "prunable" if r["prunable"] else f"frozen: {r['frozen']}"
        kept = f" -> {r['kept']}" if "kept" in r else ""
        if r.get("normalised") and r["prunable"]:
            state += f" (normalised by {len(r['normalised'])} normalisation node(s))"
        lines.append(f"group {r['id']:>3}  width {r['width']:>5}{kept}  macs {100 * r['mac_share']:5.1f}%  "
                     f"producers [{', '.join(r['producers'])}]  consumers [{', '.join(r['consumers'])}]  {state}")
    return "\n".join(lines)


def summary(report: dict) -> str:
    groups = report["groups"]
    pruned = sum(1 for g in groups if g["prunable"] and g.get("kept", g["width"]) < g["width"])
    frozen = sum(1 for g in groups if not g["prunable"])
    lines = [
        f"groups: {len(groups)} ({pruned} shrunk, {frozen} frozen)" if frozen < len(groups) else
        f"nothing to prune: all {len(groups)} channel groups are frozen (see `onnxfuse inspect`); "
        "the output is an unchanged copy",
        f"params: {report['params_before']:,} -> {report['params_after']:,} "
        f"({_ratio(report['params_after'], report['params_before'])})",
        f"MACs:   {report['macs_before']:,} -> {report['macs_after']:,} "
        f"({_ratio(report['macs_after'], report['macs_before'])})",
    ]
    if report.get("defaults"):
        lines.append("defaults (auto): " + ", ".join(f"{k} {v}" for k, v in report["defaults"].items())
                     + " (docs/defaults.md)")
    lines += _repair_lines(report)
    if "split_data" in report:
        split = report["split_data"]
        unmoved = ", ".join(f"{v:.2f}" for v in split["merge"]["unmoved_share"].values())
        lines.append(f"split-data: {split['parts']} students, {split['steps_per_part']} steps each on their part, "
                     f"merged (share of channels the OT left in place: {unmoved})")
    if "fuse_first" in report:
        first = report["fuse_first"]
        unmoved = ", ".join(f"{v:.2f}" for v in first["merge"]["unmoved_share"].values())
        lines.append(f"fuse-first: {len(first['models'])} models merged (share of channels the OT left in place: "
                     f"{unmoved}), distilled {first['train']['steps']} steps from their ensemble, then compressed")
    if "iterative" in report:
        lines.append(f"iterative: {len(report['iterative'])} rounds, kept " + ", ".join(
            f"{r['kept']:.3g} in {r['steps']} of {r['budget']} steps" for r in report["iterative"]))
    if "tpp" in report:
        t = report["tpp"]
        lines.append(f"tpp: {t['update_steps']} update + {t['stabilise_steps']} stabilise steps on {t['groups']} "
                     f"groups in {t['seconds']:.0f} s; dropped rows' norm ratio {t['dropped_norm_ratio']:.2g} "
                     "before removal")
    if "sdprun" in report:
        s = report["sdprun"]
        lines.append(f"sdprun: {s['steps']} steps in {s['seconds']:.0f} s; {s['zeroed']} channels reached zero of "
                     f"{s['planned_dropped']} planned to go (the rest by importance)")
    if report.get("train", {}).get("steps") is not None:
        lines.append(train_summary(report["train"]))
    val = report.get("validation")
    if val:
        line = f"validation on {val['samples']} samples of {val['data']} ({val['provider']}):"
        if "top1_agreement" in val:
            line += f" top-1 agreement {100 * val['top1_agreement']:.1f}%"
        if "accuracy_original" in val:
            line += (f", accuracy {100 * val['accuracy_original']:.2f}% -> "
                     f"{100 * val['accuracy_compressed']:.2f}%")
        errors = [o["max_abs_error"] for o in val["outputs"].values() if "max_abs_error" in o]
        if errors:
            line += f", max output error {max(errors):.3g}"
        lines.append(line)
    lines += _alignment_hint(report)
    return "\n".join(lines)


def train_summary(train: dict) -> str:
    """One line: steps, time, loss from first to last stretch, the validation score before and after."""
    curve = train["loss_curve"]
    loss = f", loss {curve[0][1]:.4g} -> {curve[-1][1]:.4g}" if curve else ""
    per_step = f" ({1000 * train['seconds_per_step']:.0f} ms/step)" if train["seconds_per_step"] else ""
    teacher = f" (teacher {100 * train['teacher_score']:.2f}%)" if train.get("teacher_score") is not None else ""
    score = (lambda v: f"{100 * v:.2f}%") if train["metric"] != "negative relative error" else (lambda v: f"{v:.4g}")
    return (f"train: {train['steps']} steps at batch {train['batch']} on {train['device']} in {train['seconds']:.0f} s"
            f"{per_step}{loss}; held-out {train['metric']} {score(train['score_before'])} -> "
            f"{score(train['score_after'])}{teacher}, best step {train['best_step']}")


def _alignment_hint(report: dict) -> list[str]:
    """On the CPU, widths between two multiples of ONNX Runtime's channel block cost as much as the
    next multiple: say so when the default --round-to 1 left such widths."""
    options = report.get("options", {})
    block = cpu_channel_block()
    if options.get("round_to") != 1 or options.get("device") not in ("auto", "cpu") or block <= 1:
        return []
    unaligned = [g for g in report["groups"] if g["prunable"] and g.get("kept", g["width"]) < g["width"]
                 and g["kept"] % block]
    if not unaligned:
        return []
    return [f"hint: {len(unaligned)} shrunk groups have widths that are not multiples of {block}, the channel "
            f"block of ONNX Runtime's CPU convolutions here; --round-to {block} turns MAC savings into "
            "more latency savings (see `onnxfuse bench`)"]


def _repair_lines(report: dict) -> list[str]:
    """What the repair step recovered: its own fit per group/consumer, and agreement before it."""
    lines, rows = [], report.get("repair") or []
    chosen = [r for r in rows if "choice" in r]
    lines += [_select_line(row) for row in chosen]
    fits = [r for r in rows if "output_error_before" in r and "columns" in r]
    scaled = [r for r in rows if "units" in r]
    stats = [r for r in rows if "std_error_before" in r]
    if scaled:
        before, after = (np.mean([s[key] for s in scaled]) for key in ("output_error_before", "output_error_after"))
        lines.append(f"rescale repair: {sum(s['rescaled'] for s in scaled)} of {len(scaled)} consumers rescaled "
                     f"({sum(s['units'] for s in scaled)} scales), mean relative output error on the calibration "
                     f"data {before:.3f} -> {after:.3f}")
    if stats:
        error = np.mean([s["std_error_before"] for s in stats])
        lines.append(f"stats repair: {len(stats)} groups; the new channels' std was off its target by "
                     f"{100 * error:.0f}% on average, matched after")
    if fits:
        refit = [s for s in fits if s.get("refit", True)]
        before, after = (np.mean([s[key] for s in fits]) for key in ("output_error_before", "output_error_after"))
        thin = min(s["rows"] / s["columns"] for s in fits)
        kept = f" ({len(fits) - len(refit)} kept their weights: no better on every held-out fold)" \
            if len(refit) < len(fits) else ""
        lines.append(f"lsq repair: {len(refit)} of {len(fits)} consumers refit{kept}, mean relative output error "
                     f"on the calibration data {before:.3f} -> {after:.3f}; fewest rows per column {thin:.1f}")
        held = [s for s in fits if "held_out_error_before" in s]
        if held:
            lines.append("  on held-out folds: " + f"{np.mean([s['held_out_error_before'] for s in held]):.3f} -> "
                         f"{np.mean([min(s['held_out_error_refit'], s['held_out_error_before']) for s in held]):.3f}")
    elif rows and not (chosen or stats or scaled):
        lines.append(f"{report['options']['repair']} repair: {len(rows)} steps")
    before = report.get("validation_before_repair")
    if before and "top1_agreement" in before:
        line = f"before repair: top-1 agreement {100 * before['top1_agreement']:.1f}%"
        if "accuracy_compressed" in before:
            line += f", accuracy {100 * before['accuracy_compressed']:.2f}%"
        lines.append(line)
    return lines


def _select_line(row: dict) -> str:
    damage = ", ".join(f"{name} {value:.4f}" for name, value in row.get("held_out_damage", {}).items())
    if not damage:
        return f"select repair: {row['choice']} ({row.get('reason', '')})"
    return (f"select repair: {row['choice']} (held-out output damage: {damage}; statistics kept for "
            f"{len(row['stats_kept'])} producers)")


def _ratio(after: int, before: int) -> str:
    return f"{after / before:.3f}x" if before else "n/a"
