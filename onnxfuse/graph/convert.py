"""ONNX ⇄ onnx-graphsurgeon: import with lazy external data, export with the original's opsets and
interface, runnable and skeleton (weights as stubs) models."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor
from onnx_graphsurgeon.importers.onnx_importer import get_itemsize, get_onnx_tensor_dtype, get_onnx_tensor_shape
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..errors import OnnxfuseError
from .layouts import WEIGHTED_OPS
from .legacy import list_initializers_as_inputs


def import_graph(model: onnx.ModelProto, weights_dir: str | None = None) -> gs.Graph:
    """The graph of `model`; initializers the proto keeps as external data are read from their
    files in `weights_dir` when first used (see ExternalValues)."""
    try:
        graph = gs.import_onnx(model)
    except Exception as exc:  # graphsurgeon raises plain exceptions on malformed graphs
        raise OnnxfuseError(f"cannot read the graph ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and isinstance(tensor._values, LazyValues) \
                and tensor._values.tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor._values = ExternalValues(tensor._values.tensor, weights_dir)
            tensor.data_location = None
    return graph


class ExternalValues(LazyValues):
    """A weight whose data stays in its external-data file: `tensor` reads it into a fresh proto
    each time it is asked for (graphsurgeon exports it so), `load` (the first access to the
    constant's values) into an array. Neither the model proto nor the graph holds a copy before."""

    def __init__(self, header: onnx.TensorProto, folder: str | None):
        self.header, self.folder = header, folder
        self.shape = get_onnx_tensor_shape(header)
        self.dtype = get_onnx_tensor_dtype(header)
        self.nbytes = int(np.prod(self.shape)) * get_itemsize(self.dtype)

    @property
    def tensor(self) -> onnx.TensorProto:
        if self.folder is None:
            raise OnnxfuseError(f"tensor {self.header.name}: external data, but no folder to read it from")
        loaded = onnx.TensorProto()
        loaded.CopyFrom(self.header)
        try:
            load_external_data_for_tensor(loaded, self.folder)
        except (OSError, ValueError) as exc:
            raise OnnxfuseError(f"cannot read external data of {self.header.name} ({exc})") from None
        loaded.ClearField("data_location")  # as if it had always been inline
        return loaded


def export_model(graph: gs.Graph, like: onnx.ModelProto, release: bool = False) -> onnx.ModelProto:
    """Export with the original model's opsets, IR version and metadata. Large weights are copied
    into the proto one at a time; with `release` each constant then reads its values from the
    proto (the graph drops its arrays), so the weights exist once."""
    stubbed = _export_structure(graph, like, _large)
    _fill_weights(stubbed, release)
    return stubbed.model


def _large(tensor: gs.Constant) -> bool:
    if isinstance(tensor._values, ExternalValues):
        return True
    return _nbytes(tensor) > LARGE and np.dtype(tensor.dtype).kind in "biufc"


class _Stubbed:
    def __init__(self, model: onnx.ModelProto, constants: dict[str, gs.Constant]):
        self.model, self.constants = model, constants


def _export_structure(graph: gs.Graph, like: onnx.ModelProto, stub) -> _Stubbed:
    """The model with every constant for which `stub(constant)` holds as a stub without data
    (an external-data entry that points nowhere)."""
    saved = {}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor._export_dtype in (None, tensor.dtype) and stub(tensor):
            saved[tensor.name] = (tensor, tensor._values)
            tensor._values = LazyValues(_stub(tensor))
    try:
        model = _export(graph, like)
    finally:
        for tensor, values in saved.values():
            tensor._values = values
    return _Stubbed(model, {name: tensor for name, (tensor, _) in saved.items()})


def _fill_weights(stubbed: _Stubbed, release: bool) -> None:
    for init in stubbed.model.graph.initializer:
        tensor = stubbed.constants.get(init.name)
        if tensor is None:
            continue
        if isinstance(tensor._values, LazyValues):  # as graphsurgeon exports it: its proto
            init.CopyFrom(tensor._values.tensor)
            init.name = tensor.name
        else:
            init.ClearField("external_data")
            init.ClearField("data_location")
            init.raw_data = tensor.values.tobytes()
            if tensor.data_location is not None:
                init.data_location = tensor.data_location
        if release:
            tensor._values = LazyValues(init)


def _export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(like, field))
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    _keep_interface_types(model, like)
    list_initializers_as_inputs(model)  # IR < 4 requires it
    return model


def runnable(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as a model ONNX Runtime can run while its shapes are stale (no value_info)."""
    model = export_model(graph, like)
    del model.graph.value_info[:]
    return model


def _keep_interface_types(model: onnx.ModelProto, like: onnx.ModelProto) -> None:
    """Graph inputs and outputs keep their declared types (shape inference may rename symbolic
    dims); a static dimension that really changed is an error."""
    for kind in ("input", "output"):
        declared = {v.name: v for v in getattr(like.graph, kind)}
        for value in getattr(model.graph, kind):
            if value.name not in declared:
                continue
            old, new = declared[value.name].type.tensor_type, value.type.tensor_type
            if old.HasField("shape") and new.HasField("shape"):
                for a, b in zip(old.shape.dim, new.shape.dim):
                    if a.HasField("dim_value") and b.HasField("dim_value") and a.dim_value != b.dim_value:
                        raise RuntimeError(f"internal error: graph {kind} {value.name} changed shape")
            value.type.CopyFrom(declared[value.name].type)


LARGE = 4096  # bytes


def skeleton(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as a model whose large weights are stubs without data (external-data entries
    that point nowhere), so that shape inference never copies them. Only weights read by
    weighted ops alone: shape inference needs their shapes, not their values (ONNX Runtime's
    symbolic inference reads the values of other constants, e.g. an Add's)."""
    def weight(tensor: gs.Constant) -> bool:
        return _large(tensor) and tensor.outputs and all(n.op in WEIGHTED_OPS and n.inputs[0] is not tensor
                                                         for n in tensor.outputs)

    model = _export_structure(graph, like, weight).model
    del model.graph.value_info[:]
    return model


def _nbytes(tensor: gs.Constant) -> int:
    try:
        return int(np.prod(tensor.shape)) * np.dtype(tensor.dtype).itemsize
    except TypeError:  # a type numpy does not know: keep it
        return 0


def _stub(tensor: gs.Constant) -> onnx.TensorProto:
    if isinstance(tensor._values, ExternalValues):
        data_type = tensor._values.header.data_type
    elif isinstance(tensor._values, LazyValues):
        data_type = tensor._values.tensor.data_type
    else:
        data_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
    stub = onnx.TensorProto(name=tensor.name, dims=list(tensor.shape), data_type=data_type,
                            data_location=onnx.TensorProto.EXTERNAL)
    stub.external_data.add(key="location", value="skeleton-without-data")
    return stub


def update_constants(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """Give the graph's constants the values of `model`'s initializers and Constant nodes of the same
    names (a copy of the graph whose weights changed, e.g. by training)."""
    tensors = graph.tensors()
    values = {t.name: t for t in model.graph.initializer}
    values.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                   if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"})
    for name, proto in values.items():
        tensor = tensors.get(name)
        if isinstance(tensor, gs.Constant):
            tensor.values = numpy_helper.to_array(proto)
        elif tensor is not None and tensor.inputs and tensor.inputs[0].op == "Constant" and \
                isinstance(tensor.inputs[0].attrs.get("value"), gs.Constant):
            tensor.inputs[0].attrs["value"].values = numpy_helper.to_array(proto)
