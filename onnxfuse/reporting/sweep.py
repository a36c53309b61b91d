"""`onnxfuse sweep`'s outputs: one row per compressed model, the Markdown table and the plot."""

from __future__ import annotations

from pathlib import Path

from ..errors import OnnxfuseError
from ..graph.io import atomic_file


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OnnxfuseError(f"{out_dir}: not a folder")
    if not out_dir.parent.is_dir():
        raise OnnxfuseError(f"{out_dir.parent}: no such folder")


def sweep_row(method: str, sparsity: float, report: dict, speed: dict) -> dict:
    val = report["validation"]
    (timing,) = speed["batches"]
    return {"method": method, "sparsity": sparsity,
            "mac_ratio": round(report["macs_after"] / report["macs_before"], 4),
            "params_ratio": round(report["params_after"] / report["params_before"], 4),
            "accuracy": val.get("accuracy_compressed"), "agreement": val.get("top1_agreement"),
            "latency_ms": timing["compressed"]["median_ms"], "latency_ratio": round(1 / timing["speedup"], 4),
            "speedup": timing["speedup"]}


def table(result: dict) -> str:
    dense = result["accuracy_original"]
    lines = [f"Sweep of {result['model']}: ONNX Runtime {result['provider']}, batch {result['batch']}, "
             f"{result['threads']} threads" + (f"; dense accuracy {100 * dense:.2f} %" if dense is not None else ""),
             "", "| method | sparsity | MACs | params | accuracy % | top-1 agreement % | latency ms | "
             "speed-up | ideal (1/MACs) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        acc = f"{100 * r['accuracy']:.2f}" if r["accuracy"] is not None else "–"
        agree = f"{100 * r['agreement']:.1f}" if r["agreement"] is not None else "–"
        lines.append(f"| {r['method']} | {r['sparsity']} | {r['mac_ratio']:.3f}× | {r['params_ratio']:.3f}× | {acc} | "
                     f"{agree} | {r['latency_ms']:.3f} | {r['speedup']:.2f}× | {1 / r['mac_ratio']:.2f}× |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    metric = "accuracy" if result["accuracy_original"] is not None else "agreement"
    for method in dict.fromkeys(r["method"] for r in result["rows"]):
        rows = sorted((r for r in result["rows"] if r["method"] == method), key=lambda r: r["mac_ratio"])
        macs = [r["mac_ratio"] for r in rows]
        left.plot(macs, [100 * r[metric] for r in rows], "o-", label=method)
        right.plot(macs, [r["latency_ratio"] for r in rows], "o-", label=method)
    if metric == "accuracy":
        left.axhline(100 * result["accuracy_original"], color="grey", ls="--", label="dense")
    right.plot([0, 1], [0, 1], color="grey", ls="--", label="ideal (latency = MACs)")
    left.set(xlabel="MACs (fraction of dense)", ylabel=f"{metric} %", title=f"{metric} vs MACs")
    right.set(xlabel="MACs (fraction of dense)", ylabel="latency (fraction of dense)",
              title=f"latency vs MACs, batch {result['batch']} ({result['provider'].replace('ExecutionProvider', '')})")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_file(path) as f:  # never a partial plot
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
