"""Attention exports brought into the form the analysis reads (heads on an axis of their own).

Exporters write nn.MultiheadAttention with the head axis folded into the batch axis for a while
((S, B, H·D) → (S, B·H, D) → (B·H, S, D) → (B, H, S, D)), pick Q, K and V out of one packed
projection with Reshape → Transpose → Squeeze → Gather, and compute Reshape targets from Shape ops
at run time. Three rewrites undo that, each only where it is proven to compute the same tensor:

- `fold_runtime_shapes`: a Reshape target computed at run time, evaluated by ONNX Runtime at two
  sizes of the dynamic input dimensions, becomes a constant (the one entry that varies: -1);
- `unfold_reshape_chains`: Reshape → Transpose → Reshape that equals one Reshape splitting axes
  and one Transpose becomes those two (checked on an index tensor at two sizes of the symbolic dims);
- `selects_to_slices`: Gather of one block of a split axis becomes a Slice of the unsplit axis
  (then split and transposed as the Gather's output was).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..calibration.data import input_specs


def normalize_attention(graph: gs.Graph, like: onnx.ModelProto, fold_bn: bool,
                        input_shapes: dict[str, list[int]] | None = None) -> list[str]:
    """The three rewrites in order, shapes inferred afresh after each that changed the graph
    (graph: normalised already, shapes inferred; `input_shapes`: sizes the model runs at, for its
    dynamic input dimensions). Returns a line per change for the report."""
    from .rewrites import normalize
    from .shapes import infer_shapes

    notes = fold_runtime_shapes(graph, like, input_shapes or {})
    if notes:  # the Shape arithmetic that computed the targets is dead now
        normalize(graph, fold_bn)
        infer_shapes(graph, like)
    for rewrite in (selects_to_slices, unfold_reshape_chains):
        changed = rewrite(graph)
        if changed:
            infer_shapes(graph, like)
        notes += changed
    return notes


def fold_runtime_shapes(graph: gs.Graph, like: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> list[str]:
    """Reshapes whose target is computed and whose output shape is not all numbers: their targets
    evaluated at a base size (batch 2, the other dynamic dimensions as in `input_shapes`) and with
    each dynamic dimension changed alone (a change the model does not run at: that dimension is
    taken as fixed); the constant targets are kept only if the model then computes what it did
    with all those changes at once."""
    reshapes = [n for n in graph.nodes if n.op == "Reshape" and not isinstance(n.inputs[1], gs.Constant)
                and not _known(n.outputs[0].shape)]
    if not reshapes:
        return []
    from .convert import export_model

    before = export_model(graph, like)
    base, changes = _trial_sizes(before, input_shapes)
    outputs = [o.name for o in before.graph.output]
    run_before = _runner(before, [t.name for n in reshapes for t in n.inputs[:2]] + outputs)
    values, combined = [run_before(base)], {name: list(dims) for name, dims in base.items()}
    for name, axis, alone, together in changes:
        size = {n: list(dims) for n, dims in base.items()}
        size[name][axis] = alone
        ran = run_before(size) if values[0] is not None else None
        if ran is not None:  # else the model does not run with this dimension changed: it is fixed
            values.append(ran)
            combined[name][axis] = together
    if values[0] is None or len(values) < 2:
        return []
    targets = {n.name: t for n in reshapes if (t := _constant_target(n, values)) is not None}
    computed = {node.name: node.inputs[1] for node in reshapes}
    for node in reshapes:
        if node.name in targets:
            node.inputs[1] = gs.Constant(f"{node.name}_target", targets[node.name])
    check = [run_before(combined), _runner(export_model(graph, like), outputs)(combined)]
    if None in check or any(a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-5)
                            for a, b in ((check[0][n], check[1][n]) for n in outputs)):
        for node in reshapes:  # not proven: the computed targets stay
            node.inputs[1] = computed[node.name]
        return []
    return [f"{len(targets)} Reshape targets computed at run time made constant"] if targets else []


def _constant_target(node: gs.Node, values: list[dict]) -> np.ndarray | None:
    """One target for every size: entries that vary and equal the input's size on that axis
    become 0 (copy it) unless the node forbids that, one other varying entry -1."""
    targets = [np.asarray(v[node.inputs[1].name]).astype(np.int64) for v in values]
    shapes = [v[node.inputs[0].name].shape for v in values]
    first = targets[0]
    if first.ndim != 1 or any(t.shape != first.shape for t in targets):
        return None
    target, varying = first.copy(), []
    for i in np.flatnonzero(np.any([t != first for t in targets], axis=0)):
        if not node.attrs.get("allowzero", 0) and all(i < len(s) and s[i] == t[i] for s, t in zip(shapes, targets)):
            target[i] = 0
        else:
            varying.append(i)
    if len(varying) > 1 or (varying and -1 in first.tolist()):
        return None
    target[varying] = -1
    return target


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _trial_sizes(model: onnx.ModelProto, input_shapes: dict[str, list[int]]):
    """The base input shapes (batch 2; other dynamic dimensions from `input_shapes`, else 8) and per
    dynamic dimension (input, axis, its size changed alone, its size when all change together)."""
    base, changes = {}, []
    for spec in input_specs(model):
        dims = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        given = input_shapes.get(spec.name) or [0] * len(dims)
        base[spec.name] = [d if d is not None else 2 if axis == 0 else given[axis] or 8 for axis, d in enumerate(dims)]
        changes += [(spec.name, axis, 3, 4) if axis == 0 else
                    (spec.name, axis, 2 * base[spec.name][axis], 3 * base[spec.name][axis])
                    for axis, d in enumerate(dims) if d is None]
    return base, changes


def _runner(model: onnx.ModelProto, names: list[str]):
    """run(sizes) → the tensors `names` on seeded inputs of those shapes (zeros for integers), or
    None when the model does not run at them; one session for every size."""
    from ..runtime.sessions import session

    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]
    names = list(dict.fromkeys(names))
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    silent = ort.RunOptions()
    silent.log_severity_level = 4  # a size the model cannot run at is an answer here, not an error to print
    try:
        sess = session(model, "cpu", fuse_nodes=False)
    except Exception:  # noqa: BLE001  (onnxruntime's own error types)
        sess = None
    specs = input_specs(model)

    def run(sizes: dict[str, list[int]]) -> dict | None:
        if sess is None:
            return None
        rng = np.random.default_rng(0)
        feeds = {spec.name: rng.standard_normal(sizes[spec.name]).astype(spec.dtype) if spec.dtype.kind == "f"
                 else np.zeros(sizes[spec.name], dtype=spec.dtype) for spec in specs}
        try:
            return dict(zip(names, sess.run(names, feeds, silent)))
        except Exception:  # noqa: BLE001  (onnxruntime's own error types: it does not run at these sizes)
            return None

    return run


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
    trials = _index_trials(first.inputs[0].shape, [first, transpose, last])
    if trials is None:
        return None
    found = [{tuple(perm): split for split, perm in _split_candidates(x, y)} for _, x, y in trials]
    perms = set(found[0]) & set(found[1])
    if not perms:
        return None
    perm = min(perms)
    first_split, second_split = (candidates[perm] for candidates in found)
    varying = [i for i, (a, b) in enumerate(zip(first_split, second_split)) if a != b]
    if len(varying) > 1:
        return None
    return [-1 if i in varying else d for i, d in enumerate(first_split)], list(perm)


def _index_trials(shape, chain: list[gs.Node]) -> list[tuple[list[int], np.ndarray, np.ndarray]] | None:
    """(sizes, x, chain(x)) for x an index tensor of `shape` at two values of its symbolic dims;
    None when a size is not positive or the chain does not apply."""
    symbols = sorted({d for d in shape if not isinstance(d, int)})
    trials = []
    for values in (range(7, 100, 4), range(11, 200, 6)):
        sizes = [dict(zip(symbols, values)).get(d, d) for d in shape]
        if not all(isinstance(d, int) and d > 0 for d in sizes):
            return None
        x = np.arange(int(np.prod(sizes))).reshape(sizes)
        try:
            y = x
            for node in chain:
                y = _move(y, node)
        except (ValueError, IndexError):
            return None
        trials.append((sizes, x, y))
    return trials


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
    for last in list(graph.nodes):
        select = _selection(last)
        found = _select_source(select[0]) if select else None
        if found is None:
            continue
        source, chain = found
        piece = _as_slice(source, chain + select)
        if piece is None:
            continue
        axis, start, end, target, perm = piece
        name = select[0].name
        bounds = [gs.Constant(f"{name}_{what}", np.array([value], dtype=np.int64))
                  for what, value in zip(("starts", "ends", "axes"), (start, end, axis))]
        out = last.outputs[0]
        for node in select:
            node.inputs.clear()
            node.outputs.clear()
        moved = perm != sorted(perm) or len(target) != len(source.shape)
        sliced = gs.Variable(f"{name}_sliced", dtype=out.dtype) if moved else out
        graph.nodes.append(gs.Node("Slice", f"{name}_slice", {}, [source, *bounds], [sliced]))
        if moved:
            split = gs.Variable(f"{name}_split", dtype=out.dtype)
            graph.nodes.append(gs.Node("Reshape", f"{name}_split", {},
                                       [sliced, gs.Constant(f"{name}_target", np.array(target, np.int64))], [split]))
            graph.nodes.append(gs.Node("Transpose", f"{name}_order", {"perm": perm}, [split], [out]))
        count += 1
    if count:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return [f"{count} selections of one block of a split axis written as Slices"] if count else []


MOVES = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")


def _selection(node: gs.Node) -> list[gs.Node] | None:
    """[Gather] of one constant index, or [Slice, Squeeze] of one element along an axis."""
    if not node.inputs or any(not isinstance(t, gs.Constant) for t in node.inputs[1:]):
        return None
    if node.op == "Gather" and np.asarray(node.inputs[1].values).ndim == 0:
        return [node]
    if node.op == "Squeeze" and node.inputs[0].inputs and len(node.inputs[0].outputs) == 1:
        picked = node.inputs[0].inputs[0]
        if picked.op == "Slice" and all(isinstance(t, gs.Constant) for t in picked.inputs[1:]):
            return [picked, node]
    return None


def _select_source(first: gs.Node):
    """(the tensor before a Reshape → moves chain, the chain) that feeds `first`, or None."""
    chain, tensor = [], first.inputs[0]
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


def _as_slice(source: gs.Tensor, chain: list[gs.Node]):
    """(axis, start, end, split target, perm): source[start:end] along axis, reshaped to the target
    and transposed by perm, equals the chain's output at two sizes of the symbolic dims; None if
    no such slice exists."""
    trials = _index_trials(list(source.shape), chain)
    if trials is None:
        return None
    found = [dict(_slices(x, y)) for _, x, y in trials]
    pieces = set(found[0]) & set(found[1])
    if not pieces:
        return None
    piece = min(pieces)
    first, second = (candidates[piece] for candidates in found)
    sizes = [size for size, _, _ in trials]
    target, varying = list(first), []
    for i in (i for i, (a, b) in enumerate(zip(first, second)) if a != b):
        copies = all(split[i] == size[i] for split, size in zip((first, second), sizes))
        if i < len(sizes[0]) and i != piece[0] and copies:
            target[i] = 0  # the sliced tensor's own size on that axis
        else:
            varying.append(i)
    if len(varying) > 1:
        return None
    return (*piece[:3], [-1 if i in varying else d for i, d in enumerate(target)], list(piece[3]))


def _slices(x: np.ndarray, y: np.ndarray):
    """((axis, start, end, perm), split sizes) for every block of one axis of x that, split and
    transposed, is y."""
    for axis in range(x.ndim):
        rest = x.size // x.shape[axis]
        width = y.size // rest
        if width * rest != y.size or width == 0 or x.shape[axis] % width:
            continue
        for start in range(0, x.shape[axis], width):
            piece = np.take(x, range(start, start + width), axis=axis)
            for split, perm in _split_candidates(piece, y):
                yield (axis, start, start + width, tuple(perm)), split


def _move(x: np.ndarray, node: gs.Node) -> np.ndarray:
    """The op on an index tensor (the ops a selection chain holds)."""
    if node.op == "Gather":
        return np.take(x, int(np.asarray(node.inputs[1].values)), axis=int(node.attrs.get("axis", 0)))
    if node.op == "Slice":
        values = [np.asarray(t.values).ravel().tolist() for t in node.inputs[1:]]
        starts, ends = values[0], values[1]
        axes = values[2] if len(values) > 2 else list(range(len(starts)))
        steps = values[3] if len(values) > 3 else [1] * len(starts)
        index = [slice(None)] * x.ndim
        for a, b, e, st in zip(axes, starts, ends, steps):
            index[a] = slice(b, e, st)
        return x[tuple(index)]
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
