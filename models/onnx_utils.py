"""Small ONNX helpers: parameter / MAC counting, ORT inference, export checks."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import shape_inference


def count_params(model: onnx.ModelProto) -> int:
    """Sum of element counts of all graph initializers (plus Constant-node tensors
    that are not scalars)."""
    total = sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer)
    return total


def _shape_map(model: onnx.ModelProto, batch: int = 1) -> dict[str, list[int]]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    # pin the batch dimension of the graph inputs
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    m = shape_inference.infer_shapes(m, data_prop=True)
    shapes: dict[str, list[int]] = {}
    vis = list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)
    for vi in vis:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def count_macs(model: onnx.ModelProto, batch: int = 1) -> int:
    """Multiply-accumulates of Conv / Gemm / MatMul nodes at the given batch size."""
    shapes = _shape_map(model, batch)
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = shapes[node.input[1]]          # (Cout, Cin/groups, kh, kw)
            y = shapes[node.output[0]]         # (N, Cout, H, W)
            macs += int(np.prod(y)) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            trans_b = next((at.i for at in node.attribute if at.name == "transB"), 0)
            m_ = a[1] if trans_a else a[0]
            k = a[0] if trans_a else a[1]
            n = b[0] if trans_b else b[1]
            macs += m_ * k * n
        elif node.op_type == "MatMul":
            a, y = shapes[node.input[0]], shapes[node.output[0]]
            macs += int(np.prod(y)) * a[-1]
    return int(macs)


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def bn_nodes_inference_mode(model: onnx.ModelProto) -> tuple[int, bool]:
    """Return (number of BatchNormalization nodes, all of them in inference form)."""
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    ok = True
    for n in bns:
        tm = next((a.i for a in n.attribute if a.name == "training_mode"), 0)
        outs = [o for o in n.output if o]
        if tm != 0 or len(outs) != 1:
            ok = False
    return len(bns), ok


def ort_session(path_or_bytes, threads: int = 2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    src = path_or_bytes if isinstance(path_or_bytes, (str, bytes)) else str(path_or_bytes)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def ort_logits(sess, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """Run a session on uint8 (or float) images (N,1,28,28); returns float32 logits."""
    name = sess.get_inputs()[0].name
    outs = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].astype(np.float32)
        outs.append(sess.run(None, {name: x})[0])
    return np.concatenate(outs, 0)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())
