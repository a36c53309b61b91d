"""Data-free alternatives to the `rescale` normalisation, measured and not adopted.

Whole-network compression at 0.5 without data stays near chance on most zoo models (section
"Accuracy without calibration"). These are the other data-free corrections tried to lift it,
each applied through the one apply path (the fuse pass's map is swapped for the variant's):

  merging     kept channels stay as they are; each consumer absorbs a dropped channel i into
              the kept channel j it is transported to, scaled by ‖w_i‖ / ‖w_j‖ (the
              data-free "neuron merging" idea: relu(s·z) = s·relu(z) when w_i ≈ s·w_j);
  gram lsq    rescale's producers, and consumers refit by least squares with the producer
              weights' Gram matrix standing in for the activation covariance (white inputs),
              ridge 1e-3 of the mean diagonal;
  noise       rescale plus `--repair stats` on 256 synthetic inputs: uniform noise on 7×7
              cells, upsampled to 28×28 (blocky noise did best of white, 1/f^α and
              cell sizes 4/7/14 in a trial on ResNet-18), in the models' [0, 255] input range;
  BN-matched  `onnxfuse calib synth` on the model before BN folding (256 images from the
              generator that best reproduces its BN statistics), then `--repair stats` or
              `--repair lsq` with them: the one variant that ships (data-free, opt-in).

    python benchmarks/datafree_alternatives.py [--models resnet18,vgg11bn] [--sparsities 0.3,0.5,0.7]

Writes the section "Data-free alternatives" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxfuse.methods.intra_fusion  # noqa: E402
from benchmarks.accuracy import accuracy, parse_args, test_data, zoo_models  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from onnxfuse import pipeline  # noqa: E402
from onnxfuse.api import make_synthetic_calibration  # noqa: E402
from onnxfuse.graph.io import load_model  # noqa: E402
from onnxfuse.methods.channelmap import GroupMap  # noqa: E402
from onnxfuse.methods.intra_fusion import FusionOptions, fusion_map, member_features  # noqa: E402


def merging_map(group, tensors, kept, scores, options, activations=None) -> GroupMap:
    base = fusion_map(group, tensors, kept, scores, options, activations)
    select = GroupMap.selection(group.width, base.kept).producer
    norms = np.linalg.norm(member_features(group, tensors, roles=("producer",)), axis=1)
    if len(base.kept) == group.width or norms.size == 0:
        return base
    ratio = norms[None, :] / np.maximum(norms[base.kept][:, None], 1e-12)
    return GroupMap(base.kept, producer=select, consumer=base.consumer * ratio, param=select, shift=select)


def gram_lsq_map(group, tensors, kept, scores, options, activations=None) -> GroupMap:
    base = fusion_map(group, tensors, kept, scores, options, activations)
    producer_rows = member_features(group, tensors, roles=("producer",))
    if len(base.kept) == group.width or producer_rows.shape[1] == 0:
        return base
    cross = base.producer @ producer_rows @ producer_rows.T  # E[z' zᵀ] for white inputs, (m, n)
    gram = cross @ base.producer.T
    gram += 1e-3 * np.trace(gram) / len(gram) * np.eye(len(gram))
    return GroupMap(base.kept, producer=base.producer, consumer=np.linalg.solve(gram, cross),
                    param=base.param, shift=base.shift)


def block_noise(count: int, cells: int = 7, size: int = 28, seed: int = 0) -> np.ndarray:
    low = np.random.default_rng(seed).uniform(0, 255, (count, 1, cells, cells)).astype(np.float32)
    return np.repeat(np.repeat(low, size // cells, axis=2), size // cells, axis=3)


def evaluate(model, data, sparsities, noise_npz: str, synth_npz: str) -> dict:
    rows = {}
    variants = {"IF rescale (the default)": (None, {}),
                "merging": (merging_map, {}),
                "gram lsq": (gram_lsq_map, {}),
                "noise + stats repair": (None, dict(calib=noise_npz, repair="stats")),
                "BN-matched synthetic + stats repair": (None, dict(calib=synth_npz, repair="stats")),
                "BN-matched synthetic + lsq repair": (None, dict(calib=synth_npz, repair="lsq"))}
    for name, (map_fn, extra) in variants.items():
        cells = []
        for s in sparsities:
            options = pipeline.Options(sparsity=s, method="fuse", validate=False,  # the data-free fusion options
                                       fusion=FusionOptions(normalization="rescale", features="weights"), **extra)
            with mock.patch.object(onnxfuse.methods.intra_fusion, "fusion_map", map_fn or fusion_map):
                cells.append(accuracy(pipeline.run(pipeline.Context.for_model(options, model)).model.result, data))
        rows[name] = cells
        print(f"  {name:36s} " + "  ".join(f"{100 * c:5.1f}" for c in cells), flush=True)
    return rows


def main() -> None:
    args = parse_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    data, data_name = test_data()
    lines = ["| model | variant | " + " | ".join(f"{s:.1f}" for s in args.sparsities) + " |",
             "|---|---|" + "---|" * len(args.sparsities)]
    with tempfile.TemporaryDirectory() as tmp:
        noise_npz = str(Path(tmp) / "noise.npz")
        np.savez(noise_npz, input=block_noise(256))
        for arch, path in zoo_models(args.models):
            synth_npz = str(Path(tmp) / f"{arch}_synthetic.npz")
            make_synthetic_calibration(str(path).replace("_folded", "_bn"), synth_npz)
            for name, cells in evaluate(load_model(path), data, args.sparsities, noise_npz, synth_npz).items():
                lines.append(f"| {arch} | {name} | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    body = ["Produced by `python benchmarks/datafree_alternatives.py`: every prunable group at the same",
            f"sparsity, no data, no fine-tuning, top-1 accuracy (%) on the {data_name}; L1 importance,",
            "exact EMD. The variants are described in the script's docstring. Without any input, none is",
            "better than `rescale` on every model, so `rescale` stays the default; BN-matched synthetic",
            "images (`onnxfuse calib synth`) used as calibration data are the data-free option that ships.",
            ""] + lines
    write_section("Data-free alternatives", "\n".join(body))


if __name__ == "__main__":
    main()
