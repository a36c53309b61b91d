"""Attention exports brought into the form the analysis reads (heads on an axis of their own).

Exporters write nn.MultiheadAttention with the head axis folded into the batch axis for a while
((S, B, H·D) → (S, B·H, D) → (B·H, S, D) → (B, H, S, D)), pick Q, K and V out of one packed
projection with Reshape → Transpose → Squeeze → Gather, and compute Reshape targets from Shape ops
at run time. Three rewrites undo that, each only where it is proven to compute the same tensor:

- `fold_runtime_shapes`: a Reshape target computed at run time, evaluated by ONNX Runtime at two
  sizes of the dynamic input dimensions, becomes a constant (the one entry that varies: -1);
- `unfold_reshape_chains`: Reshape → Transpose → Reshape that equals one Reshape splitting axes
  and one Transpose becomes those two (checked on an index tensor at two sizes of the symbolic dims);
- `selects_to_slices`: Gather of one block of a split axis becomes a Slice of the unsplit axis.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs


def normalize_attention(graph: gs.Graph, like: onnx.ModelProto, fold_bn: bool) -> list[str]:
    """The three rewrites in order, shapes inferred afresh after each that changed the graph
    (graph: normalised already, shapes inferred). Returns a line per change for the report."""
    from .rewrites import normalize
    from .shapes import infer_shapes

    notes = fold_runtime_shapes(graph, like)
    if notes:  # the Shape arithmetic that computed the targets is dead now
        normalize(graph, fold_bn)
        infer_shapes(graph, like)
    for rewrite in (selects_to_slices, unfold_reshape_chains):
        changed = rewrite(graph)
        if changed:
            infer_shapes(graph, like)
        notes += changed
    return notes


def fold_runtime_shapes(graph: gs.Graph, like: onnx.ModelProto) -> list[str]:
    """Reshapes whose target is computed and whose output shape is not all numbers."""
    reshapes = [n for n in graph.nodes if n.op == "Reshape" and not isinstance(n.inputs[1], gs.Constant)
                and not _known(n.outputs[0].shape)]
    if not reshapes:
        return []
    values = _evaluate(graph, like, [n.inputs[1] for n in reshapes])
    if values is None:
        return []
    folded = 0
    for node in reshapes:
        first, second = (np.asarray(v[node.inputs[1].name]).astype(np.int64) for v in values)
        if first.shape != second.shape:
            continue
        varying = np.flatnonzero(first != second)
        if len(varying) > 1 or (len(varying) == 1 and -1 in first.tolist()):
            continue
        target = first.copy()
        target[varying] = -1
        node.inputs[1] = gs.Constant(f"{node.name}_target", target)
        folded += 1
    return [f"{folded} Reshape targets computed at run time made constant"] if folded else []


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _evaluate(graph: gs.Graph, like: onnx.ModelProto, tensors: list[gs.Tensor]) -> list[dict] | None:
    """The values of `tensors` on zero inputs at two sizes of the dynamic dimensions (None when the
    model cannot be run so)."""
    from ..runtime.sessions import session
    from .convert import export_model

    model = export_model(graph, like)
    del model.graph.value_info[:]
    names = [t.name for t in tensors]
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in existing)
    try:
        sess = session(model, "cpu", fuse_nodes=False)
        results = []
        for size in (3, 5):
            feeds = {i.name: np.zeros([d if isinstance(d, int) and d > 0 else size for d in i.shape or []],
                                      dtype=i.type and _dtype(i.type)) for i in sess.get_inputs()}
            outputs = sess.run(names, feeds)
            results.append(dict(zip(names, outputs)))
        return results
    except Exception:  # a model that does not run on zeros at these sizes: its Reshapes stay as they are
        return None


def _dtype(ort_type: str):
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
            "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
            "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(ort_type, np.float32)


def unfold_reshape_chains(graph: gs.Graph) -> list[str]:
    count = 0
    for first in list(graph.nodes):
        chain = _chain(first)
        if chain is None:
            continue
        rewrite = _as_split_and_transpose(*chain)
        if rewrite is None:
            continue
        target, perm = rewrite
        _, transpose, last = chain
        first.inputs[1] = gs.Constant(f"{first.name}_split", np.array(target, dtype=np.int64))
        transpose.attrs["perm"] = perm
        transpose.outputs = [last.outputs[0]]
        last.inputs.clear()
        last.outputs.clear()
        count += 1
    if count:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return [f"{count} Reshape → Transpose → Reshape chains written as a split and a Transpose"] if count else []


def _chain(first: gs.Node):
    """(Reshape, Transpose, Reshape) with constant targets, each the only reader of the one before."""
    if first.op != "Reshape" or len(first.inputs) < 2 or not isinstance(first.inputs[1], gs.Constant) \
            or len(first.outputs[0].outputs) != 1:
        return None
    transpose = first.outputs[0].outputs[0]
    if transpose.op != "Transpose" or len(transpose.outputs[0].outputs) != 1:
        return None
    last = transpose.outputs[0].outputs[0]
    if last.op != "Reshape" or not isinstance(last.inputs[1], gs.Constant) or first.inputs[0].shape is None:
        return None
    return first, transpose, last


def _as_split_and_transpose(first, transpose, last):
    """(target, perm) such that Transpose(Reshape(x, target), perm) equals the chain for every value
    of the symbolic input dims (checked at two), the target splitting x's axes; None if none does."""
    shape = list(first.inputs[0].shape)
    symbols = sorted({d for d in shape if not isinstance(d, int)})
    perms, splits = None, []
    for trial in (dict(zip(symbols, range(7, 100, 4))), dict(zip(symbols, range(11, 200, 6)))):
        concrete = [trial.get(d, d) for d in shape]
        if not all(isinstance(d, int) and d > 0 for d in concrete):
            return None
        x = np.arange(int(np.prod(concrete))).reshape(concrete)
        try:
            y = _reshape(np.transpose(_reshape(x, first), transpose.attrs.get("perm")), last)
        except ValueError:
            return None
        found = {tuple(perm): split for split, perm in _split_candidates(x, y)}
        perms = set(found) if perms is None else perms & set(found)
        splits.append(found)
    if not perms:
        return None
    perm = min(perms)
    first_split, second_split = (found[perm] for found in splits)
    varying = [i for i, (a, b) in enumerate(zip(first_split, second_split)) if a != b]
    if len(varying) > 1:
        return None
    return [-1 if i in varying else d for i, d in enumerate(first_split)], list(perm)


def _reshape(x: np.ndarray, node: gs.Node) -> np.ndarray:
    target = [int(v) for v in np.asarray(node.inputs[1].values)]
    if not node.attrs.get("allowzero", 0):
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return x.reshape(target)


def _split_candidates(x: np.ndarray, y: np.ndarray):
    """(split sizes, perm) with x.reshape(split).transpose(perm) == y, the split refining x's
    shape (each of its axes cut into consecutive ones)."""
    for order in itertools.permutations(range(y.ndim)):
        split = [y.shape[a] for a in order]
        if not _refines(split, list(x.shape)):
            continue
        perm = [order.index(j) for j in range(y.ndim)]
        if np.array_equal(np.transpose(x.reshape(split), perm), y):
            yield split, perm


def _refines(dims: list[int], shape: list[int]) -> bool:
    i = 0
    for size in shape:
        product = 1
        while product < size and i < len(dims):
            product *= dims[i]
            i += 1
        if product != size:
            return False
    return i == len(dims)


def selects_to_slices(graph: gs.Graph) -> list[str]:
    count = 0
    for gather in [n for n in graph.nodes if n.op == "Gather"]:
        found = _select_source(gather)
        if found is None:
            continue
        source, chain = found
        piece = _as_slice(source, chain, gather)
        if piece is None:
            continue
        bounds = [gs.Constant(f"{gather.name}_{name}", np.array([value], dtype=np.int64))
                  for name, value in zip(("starts", "ends", "axes"), (piece[1], piece[2], piece[0]))]
        out = gather.outputs[0]
        gather.inputs.clear()
        gather.outputs.clear()
        graph.nodes.append(gs.Node("Slice", f"{gather.name}_slice", {}, [source, *bounds], [out]))
        count += 1
    if count:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return [f"{count} Gathers of one block of a split axis written as Slices"] if count else []


MOVES = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")


def _select_source(gather: gs.Node):
    """(the tensor before a Reshape → moves chain, the chain) feeding a Gather of one constant
    index, or None."""
    index = gather.inputs[1]
    if not isinstance(index, gs.Constant) or np.asarray(index.values).ndim != 0:
        return None
    chain, tensor = [], gather.inputs[0]
    while tensor.inputs and tensor.inputs[0].op in MOVES and len(chain) < 6:
        node = tensor.inputs[0]
        if any(not isinstance(t, gs.Constant) for t in node.inputs[1:]):
            return None
        chain.insert(0, node)
        tensor = node.inputs[0]
        if node.op == "Reshape":
            break
    if not chain or chain[0].op != "Reshape" or tensor.shape is None:
        return None
    return tensor, chain


def _as_slice(source: gs.Tensor, chain: list[gs.Node], gather: gs.Node):
    """(axis, start, end) with source[start:end] along axis equal to the Gather's output at two
    sizes of the symbolic dims, or None."""
    shape = list(source.shape)
    symbols = sorted({d for d in shape if not isinstance(d, int)})
    found = None
    for trial in (dict(zip(symbols, range(7, 100, 4))), dict(zip(symbols, range(11, 200, 6)))):
        concrete = [trial.get(d, d) for d in shape]
        if not all(isinstance(d, int) and d > 0 for d in concrete):
            return None
        x = np.arange(int(np.prod(concrete))).reshape(concrete)
        try:
            y = x
            for node in chain:
                y = _move(y, node)
            y = np.take(y, int(np.asarray(gather.inputs[1].values)), axis=int(gather.attrs.get("axis", 0)))
        except (ValueError, IndexError):
            return None
        pieces = {piece for piece in _slices(x, y)}
        found = pieces if found is None else found & pieces
    return min(found) if found else None


def _slices(x: np.ndarray, y: np.ndarray):
    for axis in range(x.ndim):
        if y.ndim != x.ndim or any(a != b for i, (a, b) in enumerate(zip(x.shape, y.shape)) if i != axis):
            continue
        width = y.shape[axis]
        for start in range(0, x.shape[axis] - width + 1, width):
            if np.array_equal(np.take(x, range(start, start + width), axis=axis), y):
                yield axis, start, start + width


def _move(x: np.ndarray, node: gs.Node) -> np.ndarray:
    if node.op == "Reshape":
        return _reshape(x, node)
    if node.op == "Transpose":
        return np.transpose(x, node.attrs.get("perm"))
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = [int(a) for a in np.asarray(node.inputs[1].values).ravel()]
    if node.op == "Squeeze":
        return np.squeeze(x, axis=tuple(axes) if axes is not None else None)
    return np.expand_dims(x, axis=tuple(axes))
