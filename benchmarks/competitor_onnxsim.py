"""Competitor adapter: the structured (channel) pruning of ``onnxsim`` 0.8.1, at a MAC target.

Install: ``pip install onnxsim==0.8.1`` (binary wheel, e.g. cp311 manylinux_2_27/2_28 x86_64;
``Requires-Python >=3.11``; the only hard dependency is ``onnx``). Calibration runs the model with
onnxruntime when it is installed (it is, as an onnxfuse dependency), else with onnx's reference
evaluator.

What onnxsim offers, and what this adapter calls
------------------------------------------------
``onnxsim.pruning`` (re-exported at top level as ``onnxsim.apply_*``) has two *structured* entry
points. Both remove whole output channels of a producer Conv/MatMul/Gemm and the matching input
channels of its consumer(s), for the topologies their matcher proves safe: a single
producer -> (unary activations, depthwise convs) -> consumer chain, and residual ``Add`` merge groups
whose producers share one keep set (forward fan-out to several Conv consumers allowed). A chain
whose consumer is not a Conv/MatMul/Gemm (e.g. the last conv feeding ``Flatten``/
``GlobalAveragePool`` -> ``Gemm``), or one with tied / non-initializer weights or biases, is left
untouched. Every matched chain keeps ``max(1, n - llround(n * sparsity))`` of its ``n`` channels
(uniform per-chain fraction):

* ``"magnitude"``:
  ``onnxsim.pruning.apply_structured_pruning(model, sparsity=s, importance_norm="l2",
  global_sparsity=False)`` -- filters ranked by the L2 norm of their weights (Li et al.).
* ``"wanda"`` (calibrated "structured Wanda"):
  ``onnxsim.pruning.apply_structured_wanda_pruning(model, calibration_data=batches, sparsity=s,
  importance_norm="l2", epsilon=1e-8, providers=["CPUExecutionProvider"], global_sparsity=False)``
  -- channels ranked by ``||W_row||_2 * ||X_c||_2``, ``X_c`` the channel's activation where the chain
  enters its consumer, accumulated over ``batches`` (a list of ``{input_name: array}`` dicts; here
  the calibration images in batches of 64, cast to the graph input dtype).
* ``"magnitude+refit"`` / ``"wanda+refit"``: the above, then the ridge-regression refit, which lives
  in ``onnxsim.finetune`` (not in ``onnxsim.pruning``; also ``onnxsim.apply_pruning_finetune``):
  ``onnxsim.finetune.apply_pruning_finetune(original_model, pruned_model,
  calibration_data=batches, reg_param=1e-2, providers=["CPUExecutionProvider"])``.
  Its documented scope is MatMul/vanilla-Gemm only (no Conv), and it fits each layer against the
  *original* model's activations restricted to the surviving channels. On a CNN where only convs
  are pruned, the classifier Gemm's inputs are unchanged, so the fit reproduces its original
  weights: measured bit-identical output on tinyres, i.e. the refit is a no-op for these models.
  The variants are kept so that the comparison shows it.

Not used: ``global_sparsity=True`` (pools a single threshold only over plain single-producer
chains; residual groups are then left untouched, so it prunes less), the ``apply_magnitude_pruning``
/ ``apply_wanda_pruning`` / ``apply_sparsegpt_pruning`` functions (unstructured or N:M zeroing: no
MAC reduction for dense kernels), and ``onnxsim.simplify`` (not needed for the folded models).

MAC target
----------
onnxsim has no MAC/FLOP target, only the per-chain ``sparsity`` fraction. With ``target_macs``
the adapter bisects ``sparsity`` in [0, 1) for the smallest value whose MAC count (onnxfuse:
``count_macs(infer_shapes(import_graph(m), m))``) is <= ``target_macs`` x dense MACs. MACs are a
non-increasing step function of ``sparsity``, so the result is the largest achievable MAC ratio not
above the target (on tinyres, steps are about 3% apart). Keep counts depend only on ``sparsity``
and the topology, not the ranking, so the search runs the cheap magnitude call as a proxy (about
10 ms per step) and then runs the requested variant once at the sparsity found; if its MACs differ
from the proxy's (never seen), the search is repeated with the variant itself. If even
``sparsity`` = 1 - 1e-9 (one channel left per chain) stays above the target,
:class:`TargetUnreachable` is raised.

Pre-processing: ``Identity`` nodes fed by an initializer are replaced by a copy of it, and
initializers read by several nodes are duplicated (function unchanged). The TorchScript exporter
emits such shared tensors when BN-folded biases coincide (e.g. all-zero in an untrained model);
onnxsim declines every chain touching them. No-op on the trained reference models tried so far.

The returned model carries ``metadata_props["onnxsim_prune"]``, a JSON string with the variant,
the ``sparsity`` passed to onnxsim and the achieved MAC ratio.

Run ``python benchmarks/competitor_onnxsim.py`` for accuracies of the ``models/*_fmnist_folded.onnx``
files at target MACs 0.5 and 0.25 on the 2 000-image evaluation sample (ONNX Runtime, CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from onnxfuse.graph.convert import import_graph  # noqa: E402
from onnxfuse.graph.metrics import count_macs  # noqa: E402
from onnxfuse.graph.shapes import infer_shapes  # noqa: E402

VARIANTS = ("magnitude", "wanda", "magnitude+refit", "wanda+refit")
CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"
EVAL = ROOT / "models" / "data" / "fmnist_eval2000.npz"
PROVIDERS = ["CPUExecutionProvider"]
MAX_SPARSITY = 1.0 - 1e-9  # onnxsim requires sparsity in [0, 1); this keeps 1 channel per chain
METADATA_KEY = "onnxsim_prune"


class TargetUnreachable(ValueError):
    """onnxsim cannot bring the model down to the requested MAC fraction (``min_ratio`` is its floor)."""

    def __init__(self, target: float, min_ratio: float):
        super().__init__(f"onnxsim structured pruning reaches at best {min_ratio:.4f} of the MACs "
                         f"(sparsity -> 1), above the target {target:.4f}")
        self.target = target
        self.min_ratio = min_ratio


def mac_count(model: onnx.ModelProto) -> int:
    """Conv + Gemm/MatMul MACs for one sample, measured by onnxfuse."""
    return int(count_macs(infer_shapes(import_graph(model), model)))


def calibration_batches(model: onnx.ModelProto, calib: Mapping[str, np.ndarray],
                        batch_size: int = 64) -> list[dict[str, np.ndarray]]:
    """Turn ``{input_name: array (N, ...)}`` into onnxsim's ``calibration_data``: a list of
    ``{input_name: array}`` batches cast to the graph input dtypes. Keys that are not graph inputs
    (e.g. ``labels``) are ignored."""
    inputs = {i.name: helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    arrays = {name: np.asarray(calib[name]).astype(dtype) for name, dtype in inputs.items() if name in calib}
    missing = set(inputs) - set(arrays)
    if missing:
        raise ValueError(f"calibration data lacks graph input(s) {sorted(missing)}")
    n = len(next(iter(arrays.values())))
    return [{name: a[i:i + batch_size] for name, a in arrays.items()} for i in range(0, n, batch_size)]


def untie_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` where ``Identity(initializer)`` nodes become initializers and every
    initializer is read by at most one node input (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            graph.initializer.append(t)
            inits[t.name] = t
            graph.node.remove(node)
    uses = Counter(name for node in graph.node for name in node.input if name in inits)
    seen: Counter = Counter()
    taken = {t.name for t in graph.initializer} | {v for n in graph.node for v in n.output}
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name not in inits or uses[name] < 2:
                continue
            seen[name] += 1
            if seen[name] == 1:
                continue  # the first reader keeps the original tensor
            new = f"{name}__untied{seen[name]}"
            while new in taken:
                new += "_"
            taken.add(new)
            t = onnx.TensorProto()
            t.CopyFrom(inits[name])
            t.name = new
            graph.initializer.append(t)
            node.input[k] = new
    used = {name for node in graph.node for name in node.input} | outputs
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # drop value_info of tensors that became initializers, so shapes are re-inferred cleanly
    value_info = [v for v in graph.value_info if v.name not in inits]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    return model


def _pruner(variant: str, original: onnx.ModelProto, batches: list[dict[str, np.ndarray]] | None,
            importance_norm: str, reg_param: float) -> Callable[[float], onnx.ModelProto]:
    from onnxsim import pruning
    from onnxsim.finetune import apply_pruning_finetune

    base, _, refit = variant.partition("+")
    if base not in ("magnitude", "wanda") or refit not in ("", "refit"):
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if (base == "wanda" or refit) and not batches:
        raise ValueError(f"variant {variant!r} needs calibration data (calib=...)")

    def prune(sparsity: float) -> onnx.ModelProto:
        if base == "magnitude":
            pruned = pruning.apply_structured_pruning(original, sparsity=sparsity, importance_norm=importance_norm,
                                                      global_sparsity=False)
        else:
            pruned = pruning.apply_structured_wanda_pruning(original, calibration_data=batches, sparsity=sparsity,
                                                            importance_norm=importance_norm, epsilon=1e-8,
                                                            providers=PROVIDERS, global_sparsity=False)
        if refit:
            pruned = apply_pruning_finetune(original, pruned, calibration_data=batches, reg_param=reg_param,
                                            providers=PROVIDERS)
        return pruned

    return prune


def _bisect(prune: Callable[[float], onnx.ModelProto], dense_macs: int, target: float,
            tol: float = 1e-7) -> tuple[float, onnx.ModelProto, float]:
    """Smallest sparsity in [0, 1) with MAC ratio <= target: (sparsity, model, ratio)."""
    if target >= 1.0:
        model = prune(0.0)
        return 0.0, model, mac_count(model) / dense_macs
    hi_model = prune(MAX_SPARSITY)
    hi_ratio = mac_count(hi_model) / dense_macs
    if hi_ratio > target:
        raise TargetUnreachable(target, hi_ratio)
    lo, hi = 0.0, MAX_SPARSITY
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        model = prune(mid)
        ratio = mac_count(model) / dense_macs
        if ratio <= target:
            hi, hi_model, hi_ratio = mid, model, ratio
        else:
            lo = mid
    return hi, hi_model, hi_ratio


def onnxsim_prune(model: onnx.ModelProto, variant: str, *, sparsity: float | None = None,
                  target_macs: float | None = None, calib: Mapping[str, np.ndarray] | None = None,
                  importance_norm: str = "l2", reg_param: float = 1e-2,
                  calib_batch_size: int = 64) -> onnx.ModelProto:
    """Prune ``model`` with onnxsim 0.8.1's structured pruning.

    :param variant: ``"magnitude"``, ``"wanda"``, ``"magnitude+refit"`` or ``"wanda+refit"``
        (see the module docstring for the exact onnxsim calls).
    :param sparsity: onnxsim's per-chain fraction of channels to remove, passed through as is.
    :param target_macs: instead of ``sparsity``: wanted fraction of the dense MACs; the largest
        achievable fraction <= ``target_macs`` is returned (bisection on ``sparsity``).
        Raises :class:`TargetUnreachable` if onnxsim cannot get that low.
    :param calib: ``{input_name: array (N, ...)}``, e.g. ``np.load("models/data/fmnist_calib512.npz")``
        (extra keys such as ``labels`` are ignored; arrays are cast to the input dtype). Required by
        the wanda and refit variants.
    :param importance_norm, reg_param: onnxsim's own parameters (defaults are onnxsim's).
    :returns: the pruned model, with ``metadata_props["onnxsim_prune"]`` = JSON
        ``{"variant", "sparsity", "mac_ratio", "onnxsim"}``.
    """
    import onnxsim

    if (sparsity is None) == (target_macs is None):
        raise ValueError("give exactly one of sparsity= and target_macs=")
    original = untie_constants(model)
    batches = calibration_batches(original, calib, calib_batch_size) if calib is not None else None
    prune = _pruner(variant, original, batches, importance_norm, reg_param)
    dense = mac_count(original)
    if sparsity is not None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        pruned = prune(sparsity)
        ratio = mac_count(pruned) / dense
    else:
        proxy = _pruner("magnitude", original, None, importance_norm, reg_param)
        sparsity, proxy_model, proxy_ratio = _bisect(proxy, dense, target_macs)
        if variant == "magnitude":
            pruned, ratio = proxy_model, proxy_ratio
        else:
            pruned = prune(sparsity)
            ratio = mac_count(pruned) / dense
            if ratio != proxy_ratio:  # ranking changed what was matched: search with the variant itself
                sparsity, pruned, ratio = _bisect(prune, dense, target_macs)
    info = {"variant": variant, "sparsity": sparsity, "mac_ratio": ratio, "onnxsim": onnxsim.__version__}
    entry = pruned.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    return pruned


def pruning_info(model: onnx.ModelProto) -> dict:
    """The ``onnxsim_prune`` metadata written by :func:`onnxsim_prune` (empty dict if none)."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}


def accuracy(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=PROVIDERS)
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: images[i:i + batch].astype(np.float32)})[0]
                             for i in range(0, len(images), batch)])
    return float((logits.argmax(1) == labels).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.5,0.25", help="target MAC fractions, comma separated")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--models", nargs="*", type=Path, help="default: models/*_fmnist_folded.onnx")
    args = parser.parse_args(argv)
    import onnxsim

    targets = [float(t) for t in args.targets.split(",")]
    variants = args.variants.split(",")
    paths = args.models or sorted((ROOT / "models").glob("*_fmnist_folded.onnx"))
    calib = dict(np.load(CALIB))
    ev = np.load(EVAL)
    images, labels = ev["input"], ev["labels"]
    print(f"onnxsim {onnxsim.__version__}; accuracy on {len(labels)} images of {EVAL.name}, "
          f"calibration {len(calib['input'])} images of {CALIB.name}")
    for path in paths:
        model = onnx.load(str(path))
        print(f"\n{path.name}: dense MACs {mac_count(model):,}, accuracy {100 * accuracy(model, images, labels):.2f}%")
        print(f"  {'variant':16s} {'target':>6s} {'sparsity':>8s} {'MACs':>7s} {'acc %':>7s} {'time s':>7s}")
        for target in targets:
            for variant in variants:
                t0 = time.perf_counter()
                try:
                    pruned = onnxsim_prune(model, variant, target_macs=target, calib=calib)
                except TargetUnreachable as err:
                    print(f"  {variant:16s} {target:6.2f} unreachable (min MAC ratio {err.min_ratio:.3f})")
                    continue
                elapsed = time.perf_counter() - t0
                info = pruning_info(pruned)
                acc = accuracy(pruned, images, labels)
                print(f"  {variant:16s} {target:6.2f} {info['sparsity']:8.4f} {info['mac_ratio']:7.4f} "
                      f"{100 * acc:7.2f} {elapsed:7.2f}", flush=True)


if __name__ == "__main__":
    main()
