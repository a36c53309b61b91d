"""Report files: the compress report as JSON plus a Markdown summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..graph.io import atomic_file


def report_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(JSON, Markdown) for `--report PATH`: PATH and PATH with the suffix .md (or the reverse)."""
    path = Path(path)
    return (path.with_suffix(".json"), path) if path.suffix == ".md" else (path, path.with_suffix(".md"))


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def write_report(report: dict, path: str | os.PathLike, markdown_of=None) -> None:
    """The report as JSON and Markdown (`markdown_of`, default: the compress report's)."""
    json_path, md_path = report_paths(path)
    write_text(json_path, json.dumps(report, indent=2))
    write_text(md_path, (markdown_of or markdown)(report))


def markdown(r: dict) -> str:
    opts = r["options"]
    method = opts["method"] if opts.get("method") != "fuse" else f"fuse ({opts['fusion']['normalization']})"
    lines = ["# onnxfuse compress report", "",
             "Options: " + ", ".join(f"`{k}={v}`" for k, v in opts.items()
                                     if k not in ("fusion", "train") and v not in (None, ())),
             "", "| | before | after | ratio |", "|---|---|---|---|"]
    for key in ("params", "macs"):
        before, after = r[f"{key}_before"], r[f"{key}_after"]
        lines.append(f"| {'MACs' if key == 'macs' else 'params'} | {before:,} | {after:,} | "
                     f"{after / before if before else 1:.3f}× |")
    val = r.get("validation")
    if val:
        lines += ["", f"## Validation ({val['provider']}, {val['samples']} samples of {val['data']})", ""]
        if "top1_agreement" in val:
            lines.append(f"- top-1 agreement: {100 * val['top1_agreement']:.2f} %")
        if "accuracy_original" in val:
            lines.append(f"- accuracy: {100 * val['accuracy_original']:.2f} % → "
                         f"{100 * val['accuracy_compressed']:.2f} %")
        for name, o in val["outputs"].items():
            if "max_abs_error" in o:
                lines.append(f"- output `{name}`: max |error| {o['max_abs_error']:.4g}, mean {o['mean_abs_error']:.4g}")
    if r.get("train", {}).get("steps") is not None:
        lines += [""] + training_lines(r["train"])
    lat = r.get("latency")
    if lat:
        lines += ["", f"## Latency ({lat['provider']}, batch {lat['batch']}, {lat['threads']} threads)", "",
                  f"Target {lat['target']:.3f} of the original, reached {lat['reached']:.3f}: "
                  f"{'met' if lat['met'] else '**missed**'}."]
    lines += ["", "## Groups", "", "| group | kept / width | method | producers |", "|---|---|---|---|"]
    for g in r["groups"]:
        if g["prunable"]:
            kept, how = f"{g.get('kept', g['width'])} / {g['width']}", method
        else:
            kept, how = f"{g['width']} / {g['width']}", "frozen: " + g["frozen"].replace("|", "\\|")
        lines.append(f"| {g['id']} | {kept} | {how} | {', '.join(g['producers'][:3])} |")
    lines += ["", "## Time per pass (s)", "", "| " + " | ".join(r["seconds"]) + " |",
              "|" + "---|" * len(r["seconds"]), "| " + " | ".join(f"{v:.2f}" for v in r["seconds"].values()) + " |"]
    return "\n".join(lines) + "\n"


def training_markdown(train: dict) -> str:
    return "\n".join(["# onnxfuse finetune report", ""] + training_lines(train)) + "\n"


def training_lines(t: dict) -> list[str]:
    lines = [f"## Training ({t['steps']} steps, batch {t['batch']}, {t['optimizer']} lr {t['lr']}, "
             f"temperature {t['temperature']}, {t['device']}, {t['seconds']:.0f} s)", "",
             f"Held-out {t['metric']} on {t['validation_samples']} samples; the best step ({t['best_step']}) "
             "is the one written.", "", "| step | score |", "|---|---|"]
    lines += [f"| {v['step']} | {v['score']:.4f} |" for v in t["validation"]]
    if t["loss_curve"]:
        lines += ["", "Loss: " + ", ".join(f"{step}: {loss:.4g}" for step, loss in t["loss_curve"][::20])]
    return lines
