"""Does the BN-statistics mismatch pick good synthetic calibration data? (`onnxfuse calib synth`)

For each zoo model and each of the 24 generators: the mismatch of 32 images with the model's
stored BN statistics, and the test accuracy of fusion at the given sparsity (every group, L1,
exact EMD) followed by `--repair stats` on 256 images of that generator. The Spearman rank
correlation between the two says whether a low mismatch predicts a good repair; the accuracy of the
generator `calib synth` picks is set against the best and the median generator's.

    python benchmarks/synthetic_ranking.py [--models resnet18,mobilenetv2] [--sparsity 0.5]

Writes the section "Synthetic calibration data: mismatch vs accuracy" of benchmarks/RESULTS.md and
benchmarks/synthetic_ranking.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import accuracy, test_data, zoo_models  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from onnxfuse import pipeline  # noqa: E402
from onnxfuse.calibration.data import Dataset, input_specs  # noqa: E402
from onnxfuse.calibration.synthetic import GENERATORS, PROBE_SAMPLES, bn_statistics, mismatch  # noqa: E402
from onnxfuse.graph.io import load_model  # noqa: E402
from onnxfuse.log import progress  # noqa: E402
from onnxfuse.methods.intra_fusion import FusionOptions  # noqa: E402

PLOT = ROOT / "benchmarks" / "synthetic_ranking.png"


def measure(arch: str, folded: Path, sparsity: float, data: Dataset, tmp: Path) -> list[tuple[float, float]]:
    with_bn = load_model(str(folded).replace("_folded", "_bn"))
    name, shape = input_specs(with_bn)[0].name, tuple(input_specs(with_bn)[0].shape[1:])
    stats, model = bn_statistics(with_bn), load_model(folded)
    points = []
    for generator in progress(GENERATORS, desc=arch):
        score = mismatch(with_bn, Dataset({name: generator.sample(PROBE_SAMPLES, shape, 1)}), stats)
        np.savez(tmp / "synthetic.npz", **{name: generator.sample(256, shape, 0)})
        options = pipeline.Options(sparsity=sparsity, method="fuse", validate=False, calib=str(tmp / "synthetic.npz"),
                                   repair="stats", fusion=FusionOptions(normalization="rescale", features="weights"))
        points.append((score, accuracy(pipeline.run(pipeline.Context.for_model(options, model)).model.result, data)))
    return points


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(v)) for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def plot(results: dict, sparsity: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3), squeeze=False)
    for ax, (arch, points) in zip(axes[0], results.items()):
        score, acc = np.array(points).T
        ax.scatter(score, 100 * acc, s=14)
        ax.scatter(score[np.argmin(score)], 100 * acc[np.argmin(score)], s=40, color="red", label="picked")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{arch}, sparsity {sparsity}", fontsize=9)
        ax.set_xlabel("BN-statistics mismatch")
        ax.set_ylabel("test accuracy after stats repair (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    print(f"wrote {PLOT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tinyres,resnet18,vgg11bn,mobilenetv2,resnet50s")
    parser.add_argument("--sparsity", type=float, default=0.5)
    args = parser.parse_args()
    data, data_name = test_data()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, path in zoo_models(args.models):
            results[arch] = measure(arch, path, args.sparsity, data, Path(tmp))
    lines = ["| model | Spearman (mismatch, accuracy) | picked: mismatch / accuracy | best accuracy | median |",
             "|---|---|---|---|---|"]
    for arch, points in results.items():
        score, acc = np.array(points).T
        pick = int(np.argmin(score))
        lines.append(f"| {arch} | {spearman(score, acc):.2f} | {score[pick]:.3f} / {100 * acc[pick]:.1f} | "
                     f"{100 * acc.max():.1f} | {100 * np.median(acc):.1f} |")
        print(lines[-1], flush=True)
    plot(results, args.sparsity)
    body = [f"Produced by `python benchmarks/synthetic_ranking.py --sparsity {args.sparsity}`: fusion of every group",
            f"at sparsity {args.sparsity} with `--repair stats` on 256 images of each of the {len(GENERATORS)} "
            f"generators; top-1 accuracy (%) on the {data_name}. A negative correlation means a lower mismatch",
            "gives a better repair; `calib synth` picks the lowest mismatch.", "", *lines, "",
            f"![mismatch vs accuracy]({PLOT.name})"]
    write_section("Synthetic calibration data: mismatch vs accuracy", "\n".join(body))


if __name__ == "__main__":
    main()
