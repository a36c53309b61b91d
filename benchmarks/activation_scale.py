"""Why whole-network compression without data collapses: the scale of the last features.

Every prunable group of each zoo model is shrunk at once (sparsity 0.3 by default) with each
method of benchmarks/accuracy.py; on 1 000 test images we measure the standard deviation of the
classifier's input (the pooled features read by the last Gemm/MatMul) and of the logits, as a
ratio to the dense model's. Pruning and averaging shrink the features (variance collapse),
`reference` fusion sums merged channels and grows them, and each group's error multiplies
through the depth of the network.

    python benchmarks/activation_scale.py [--models resnet18,resnet50s] [--sparsity 0.3]

Writes the section "Activation scale after whole-network compression" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import METHODS, compress, test_data, zoo_models  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from onnxfuse.calibration.capture import with_outputs  # noqa: E402
from onnxfuse.graph.io import load_model  # noqa: E402
from onnxfuse.runtime.sessions import session  # noqa: E402

SAMPLES = 1000


def classifier_input(model) -> str:
    last = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    return last.input[0]


def scales(model, features: str, feeds: dict, labels: np.ndarray) -> tuple[float, float, float]:
    logits, pooled = session(with_outputs(model, [features]), "cpu").run(None, feeds)[:2]
    return float(pooled.std()), float(logits.std()), float((logits.argmax(1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tinyres,resnet18,vgg11bn,mobilenetv2,resnet50s")
    parser.add_argument("--sparsity", type=float, default=0.3)
    args = parser.parse_args()
    data, _ = test_data()
    feeds = {name: values[:SAMPLES] for name, values in data.feeds.items()}
    labels = data.labels[:SAMPLES]
    lines = [f"Produced by `python benchmarks/activation_scale.py`: every prunable group at sparsity "
             f"{args.sparsity}, no calibration data; std of the classifier's input features and of the logits "
             f"on {SAMPLES} test images, as a ratio to the dense model's, and top-1 accuracy on them.", "",
             "| model | method | feature std | logit std | accuracy |", "|---|---|---|---|---|"]
    for arch, path in zoo_models(args.models):
        model = load_model(path)
        features = classifier_input(model)
        dense = scales(model, features, feeds, labels)
        lines.append(f"| {arch} | dense | 1.00 | 1.00 | {100 * dense[2]:.1f} |")
        for name, method in METHODS.items():
            feat, logit, acc = scales(compress(model, args.sparsity, **method), features, feeds, labels)
            lines.append(f"| {arch} | {name} | {feat / dense[0]:.2f} | {logit / dense[1]:.2f} | {100 * acc:.1f} |")
            print(lines[-1], flush=True)
    write_section("Activation scale after whole-network compression", "\n".join(lines))


if __name__ == "__main__":
    main()
