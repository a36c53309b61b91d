"""benchmarks/RESULTS.md is made of `## ` sections, each written by one benchmark script."""

from __future__ import annotations

import contextlib
import json
import re
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


def cell_parser(doc: str, work: str = "/tmp/onnxfuse-finetune-bench"):
    """The arguments of a benchmark measured cell by cell: --work, --tables-only and the internal --one."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=work, help="start models and training data")
    parser.add_argument("--tables-only", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser


def run_cells(script: str, keys: list[str], store_path: Path, work: Path, store_diverged: bool = False) -> dict:
    """Each key missing from the JSON store at `store_path` measured by `script --one KEY` in a fresh
    process (its own peak memory), its last stdout line stored as it comes; returns the store. With
    `store_diverged`, a run the training stage stopped as diverged is stored as {"diverged_at": step}:
    a result, not a failure to retry."""
    import subprocess
    import sys
    import time

    store = json.loads(store_path.read_text()) if store_path.exists() else {}
    for key in keys:
        if key in store:
            continue
        begin = time.perf_counter()
        proc = subprocess.run([sys.executable, script, "--one", key, "--work", str(work)], capture_output=True,
                              text=True)
        diverged = store_diverged and re.search(r"diverged at step (\d+)", proc.stderr)
        if proc.returncode and not diverged:
            print(f"{key}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        store[key] = {"diverged_at": int(diverged.group(1))} if proc.returncode else \
            json.loads(proc.stdout.strip().splitlines()[-1])
        store[key]["wall_seconds"] = round(time.perf_counter() - begin, 1)
        print(f"{key}: {json.dumps({k: v for k, v in store[key].items() if k != 'loss_curve'})}", flush=True)
        store_path.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
    return store


def cell_main(args, one_cell, measure, write) -> None:
    """One cell (`--one KEY`: its result as a JSON line), else `measure(work)` unless --tables-only, then `write()`."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(one_cell(args.one, work)))
        return
    if not args.tables_only:
        measure(work)
    write()
