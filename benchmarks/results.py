"""benchmarks/RESULTS.md is made of `## ` sections, each written by one benchmark script."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the section `## title` of RESULTS.md."""
    section = f"## {title}\n\n{body.rstrip()}\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(f"## {title}\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    print(f"wrote section '{title}' of {RESULTS}")


def finish_accuracy_axis(ax, dense: float, title: str, xlabel: str) -> None:
    """The dense line, labels and limits shared by the accuracy plots."""
    ax.axhline(100 * dense, color="grey", linestyle="--", linewidth=1, label="dense")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)


def save_figure(fig, axes, path: Path) -> None:
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def merge_results(kind: str, new: dict) -> dict:
    """Store this run's per-model results in benchmarks/<kind>.json next to earlier runs' (a model
    measured again replaces its old entry) and return them all, so a run over some models keeps
    the tables of the others."""
    path = RESULTS.parent / f"{kind}.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored.update(_encode(new))
    path.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    return _decode(stored)


def _encode(value):
    if isinstance(value, dict):
        return {("|".join(map(str, k)) if isinstance(k, tuple) else str(k)): _encode(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


def _decode(value):
    if not isinstance(value, dict):
        return tuple(value) if isinstance(value, list) else value
    out = {}
    for key, item in value.items():
        if "|" in key:
            name, number = key.rsplit("|", 1)
            key = (name, float(number))
        else:
            with contextlib.suppress(ValueError):
                key = float(key)
        out[key] = _decode(item)
    return out
