"""Evaluate the committed ONNX models with ONNX Runtime (CPUExecutionProvider).

    python -m models.evaluate                      # all models/*_fmnist_*.onnx
    python -m models.evaluate models/resnet18_fmnist_bn.onnx ...
    python -m models.evaluate --markdown           # README-style table

Columns: params (sum of initializer sizes), MACs (Conv/Gemm/MatMul at batch 1),
accuracy on the full 10 000-image test split (needs the Debian dataset package;
shown as '-' otherwise) and on the committed 2000-image balanced sample.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnx

from . import fmnist
from .onnx_utils import accuracy, count_macs, count_params, ort_logits, ort_session

MODELS_DIR = Path(__file__).resolve().parent
ORDER = ["tinyres", "resnet18", "vgg11bn", "mobilenetv2", "resnet50s"]


def default_files() -> list[Path]:
    files = sorted(MODELS_DIR.glob("*_fmnist_*.onnx"))
    def key(p):
        arch = p.name.split("_fmnist_")[0]
        return (ORDER.index(arch) if arch in ORDER else len(ORDER), arch, p.name)
    return sorted(files, key=key)


def evaluate_file(path: Path, full=None, sample=None, threads: int = 2) -> dict:
    model = onnx.load(str(path))
    row = {"model": path.name, "params": count_params(model), "macs": count_macs(model)}
    sess = ort_session(str(path), threads)
    t0 = time.time()
    if full is not None:
        row["acc_full"] = accuracy(ort_logits(sess, full[0]), full[1])
    if sample is not None:
        row["acc_sample"] = accuracy(ort_logits(sess, sample[0]), sample[1])
    row["seconds"] = round(time.time() - t0, 1)
    return row


def _fmt_acc(v):
    return "-" if v is None else f"{100 * v:.2f}"


def markdown_table(rows: list[dict]) -> str:
    """One line per architecture (bn + folded files), with training info from
    models/results/<arch>_fmnist.json."""
    by_arch: dict[str, dict] = {}
    for r in rows:
        arch, kind = r["model"][:-len(".onnx")].split("_fmnist_")
        by_arch.setdefault(arch, {})[kind] = r
    lines = ["| model | width | params (bn / folded) | MACs | acc test 10k (%) | acc sample 2k (%) "
             "| epochs | train time | command |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for arch, kinds in by_arch.items():
        res_p = MODELS_DIR / "results" / f"{arch}_fmnist.json"
        res = json.loads(res_p.read_text()) if res_p.exists() else {}
        ref = kinds.get("folded") or kinds.get("bn")
        params = " / ".join(f"{kinds[k]['params']:,}" if k in kinds else "-" for k in ("bn", "folded"))
        accs_full = {_fmt_acc(k.get("acc_full")) for k in kinds.values()}
        accs_s = {_fmt_acc(k.get("acc_sample")) for k in kinds.values()}
        t = res.get("train_seconds")
        lines.append(
            f"| {arch} | {res.get('width', '-')} | {params} | {ref['macs']:,} | "
            f"{' / '.join(sorted(accs_full))} | {' / '.join(sorted(accs_s))} | "
            f"{res.get('epochs', '-')} | {'-' if t is None else f'{t / 60:.1f} min'} | "
            f"`{res.get('command', '-')}` |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table with training info")
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    files = args.files or default_files()
    if not files:
        print("no ONNX files found", file=sys.stderr)
        return 1
    full = None
    if fmnist.dataset_available():
        full = fmnist.load_test_split()
    else:
        print(f"note: full test split not found at {fmnist.DATASET_DIR}; skipping it", file=sys.stderr)
    sample = fmnist.load_eval_sample()

    rows = [evaluate_file(Path(f), full, sample, args.threads) for f in files]
    if args.markdown:
        print(markdown_table(rows))
    else:
        print(f"{'model':34s} {'params':>10s} {'MACs':>13s} {'acc full':>9s} {'acc 2k':>8s}")
        for r in rows:
            print(f"{r['model']:34s} {r['params']:10,d} {r['macs']:13,d} "
                  f"{_fmt_acc(r.get('acc_full')):>9s} {_fmt_acc(r.get('acc_sample')):>8s}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
