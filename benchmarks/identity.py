"""Byte-identity check across a refactoring: compress the five zoo models x {prune, fuse} x {no data,
--calib (stats repair), --calib --repair lsq, --target-macs 0.5 --allocate sensitivity} through the CLI,
and record the SHA-256 of every output model and its report (without timings), plus `inspect --json`.

    python benchmarks/identity.py --record before.json     # on the old tree
    python benchmarks/identity.py --check before.json      # on the new tree: lists every difference
    python benchmarks/identity.py --compare before.json after.json --section   # two records; RESULTS.md

It runs the installed `onnxfuse` command of the current environment, so either tree can be measured
from the same script (copy it next to an old checkout)."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = ("tinyres", "resnet18", "vgg11bn", "mobilenetv2", "resnet50s")
CALIB = "models/data/fmnist_calib512.npz"
SETTINGS = {
    "nodata": [],
    "stats": ["--calib", CALIB],
    "lsq": ["--calib", CALIB, "--repair", "lsq"],
    "sensitivity": ["--calib", CALIB, "--target-macs", "0.5", "--allocate", "sensitivity"],
}
VOLATILE = {"seconds"}  # wall-clock figures
NO_DIFFERENCE = "no difference in models or reports"


def cases():
    for model in MODELS:
        for method in ("prune", "fuse"):
            for setting, flags in SETTINGS.items():
                yield f"{model}/{method}/{setting}", model, ["--method", method, *flags]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def run_case(model: str, flags: list[str], out: Path) -> dict:
    source = ROOT / "models" / f"{model}_fmnist_folded.onnx"
    target, report = out / "out.onnx", out / "report.json"
    subprocess.run(["onnxfuse", "compress", str(source), "-o", str(target), "--no-validate", "--report", str(report),
                    *flags], cwd=ROOT, check=True, capture_output=True)
    return {"model": _digest(target.read_bytes()), "report": _strip(json.loads(report.read_text()))}


def run_inspect(model: str) -> dict:
    source = ROOT / "models" / f"{model}_fmnist_folded.onnx"
    done = subprocess.run(["onnxfuse", "inspect", str(source), "--json"], cwd=ROOT, check=True, capture_output=True)
    return json.loads(done.stdout)


def measure(only: str | None, record: Path | None = None) -> dict:
    """Every case's digests; with `record`, the cases already in that file are kept and each new one
    is saved as soon as it is measured (an interrupted run resumes)."""
    results = json.loads(record.read_text()) if record is not None and record.exists() else {}
    wanted = [case for case in cases() if not only or only in case[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, flags in wanted:
            if name in results:
                continue
            start = time.perf_counter()
            results[name] = run_case(model, flags, Path(tmp))
            print(f"{name}: {results[name]['model'][:12]} ({time.perf_counter() - start:.1f} s)", flush=True)
            if record is not None:
                record.write_text(json.dumps(results, indent=1, sort_keys=True))
    for model in MODELS:
        if not only or only in model:
            results[f"{model}/inspect"] = {"report": run_inspect(model)}
    if record is not None:
        record.write_text(json.dumps(results, indent=1, sort_keys=True))
    return results


def differences(before, after, path="") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        lines = []
        for key in sorted(set(before) | set(after)):
            where = f"{path}.{key}" if path else key
            if key not in after:
                lines.append(f"{where}: removed")
            elif key not in before:
                lines.append(f"{where}: added")
            else:
                lines += differences(before[key], after[key], where)
        return lines
    return [] if before == after else [f"{path}: {str(before)[:80]} -> {str(after)[:80]}"]


def report(recorded: dict, results: dict) -> list[str]:
    """The count of identical models, then each difference once with the number of cases it is in."""
    lines = differences({k: v for k, v in recorded.items() if k in results}, results)
    models = [k for k, v in results.items() if "model" in v]
    same = sum(recorded.get(k, {}).get("model") == results[k]["model"] for k in models)
    where: dict[str, list[str]] = {}
    for line in lines:
        case, _, rest = line.partition(".")
        where.setdefault(rest, []).append(case)
    summary = [f"{rest} (in {len(cases)} of {len(results)} cases)" for rest, cases in where.items()]
    return [f"{same} of {len(models)} output models byte-identical"] + (summary or [NO_DIFFERENCE])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", metavar="JSON")
    action.add_argument("--check", metavar="JSON")
    action.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--only", help="run the cases whose name contains this text")
    parser.add_argument("--section", action="store_true", help="write the outcome into benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.compare:
        recorded, results = (json.loads(Path(p).read_text()) for p in args.compare)
    else:
        results = measure(args.only, Path(args.record) if args.record else None)
        if args.record:
            return 0
        recorded = json.loads(Path(args.check).read_text())
    lines = report(recorded, results)
    print("\n".join(lines))
    if args.section:
        from benchmarks.results import write_section

        body = SECTION.replace("{lines}", "\n".join(f"- {x}" for x in lines))
        write_section("Refactoring check (byte identity)", body)
    return 0 if lines[1:] == [NO_DIFFERENCE] else 1


SECTION = """Produced by `python benchmarks/identity.py --record` on the tree before a refactoring and
`--check` (or `--compare BEFORE AFTER`) after it: the five zoo models × {prune, fuse} × {no data,
`--calib` (stats repair), `--calib --repair lsq`, `--target-macs 0.5 --allocate sensitivity`} through
the CLI (`--no-validate`), SHA-256 of every output model and every report without its timings, and
`inspect --json` of each model.

Restructuring into sub-packages and registries (issue 13), before = commit c5106f7 (the two records
are kept in `benchmarks/identity/`; `--compare benchmarks/identity/before_c5106f7.json
benchmarks/identity/after.json` prints this again):

{lines}

The two report keys are the intended change: the probes' internal plumbing (`only_groups`,
`fixed_counts`) moved from the user's Options into the pipeline's Context and no longer appears in
the written report.
"""


if __name__ == "__main__":
    sys.exit(main())
