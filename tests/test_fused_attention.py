"""Fused attention ops: ONNX Runtime's com.microsoft Attention (packed QKV weight) and
MultiHeadAttention as its transformer optimizer writes them for a Hugging Face BERT
(models/bert_tiny_*.onnx, models/export_bert.py: EmbedLayerNormalization, SkipLayerNormalization,
BiasGelu around them), and GroupQueryAttention and ai.onnx Attention-23 with 4 query heads reading
2 KV heads (built here: Q, K, V MatMuls, the op, an output projection)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import onnxfuse
from tests.helpers import run

ROOT = Path(__file__).resolve().parents[1]
BERT = {"attention": ROOT / "models" / "bert_tiny_attention.onnx", "mha": ROOT / "models" / "bert_tiny_mha.onnx"}
HIDDEN, HEADS, HEAD = 32, 4, 8  # the BERT's
Q_HEADS, KV_HEADS = 4, 2  # the GQA graphs'
FORMS = ("attention", "mha", "gqa", "onnx")


def grouped_query_graph(kind: str, edit=None) -> onnx.ModelProto:
    """x (B, S, 32) → Q (4 heads of 8), K, V (2 heads) → the op → output projection → y; `edit(weights)`
    changes the weights (a dict of arrays) first. GroupQueryAttention's sequence lengths come from
    x's shape, as exporters compute them."""
    rng = np.random.default_rng(0)
    weights = {name: (0.3 * rng.standard_normal(shape)).astype(np.float32) for name, shape in
               (("wq", (HIDDEN, Q_HEADS * HEAD)), ("wk", (HIDDEN, KV_HEADS * HEAD)),
                ("wv", (HIDDEN, KV_HEADS * HEAD)), ("wo", (Q_HEADS * HEAD, HIDDEN)))}
    if edit:
        edit(weights)
    nodes = [oh.make_node("MatMul", ["x", w], [t]) for w, t in (("wq", "q"), ("wk", "k"), ("wv", "v"))]
    constants = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    if kind == "onnx":
        nodes.append(oh.make_node("Attention", ["q", "k", "v"], ["a"], q_num_heads=Q_HEADS, kv_num_heads=KV_HEADS))
        opsets = [oh.make_opsetid("", 23)]
    else:
        constants += [numpy_helper.from_array(np.array(v, dtype=d), n) for n, v, d in
                      (("zero", 0, np.int64), ("one", 1, np.int64), ("shape1", [1], np.int64), ("one32", 1, np.int32))]
        nodes += [oh.make_node("Shape", ["x"], ["shape"]), oh.make_node("Gather", ["shape", "one"], ["s64"]),
                  oh.make_node("Cast", ["s64"], ["total"], to=TensorProto.INT32),
                  oh.make_node("Gather", ["shape", "zero"], ["b64"]), oh.make_node("Reshape", ["b64", "shape1"], ["b"]),
                  oh.make_node("Sub", ["total", "one32"], ["last"]), oh.make_node("Expand", ["last", "b"], ["seqlens"]),
                  oh.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens", "total"], ["a", "pk", "pv"],
                               domain="com.microsoft", num_heads=Q_HEADS, kv_num_heads=KV_HEADS)]
        opsets = [oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)]
    nodes.append(oh.make_node("MatMul", ["a", "wo"], ["y"]))
    x, y = (oh.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "sequence", HIDDEN]) for name in "xy")
    graph = oh.make_graph(nodes, kind, [x], [y], constants)
    model = oh.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def head_blocks(unit: int, per: int) -> slice:
    return slice(unit * per, (unit + 1) * per)


def bert_with(form: str, edit) -> onnx.ModelProto:
    """The BERT with `edit(arrays, attention_node)` applied to each attention node's tensors:
    arrays maps 'q', 'k', 'v' (column blocks: (C, 32) views into the packed or separate weights),
    'bias' ((96,) or None) and 'out' (the output projection, rows per head)."""
    model = onnx.load(BERT[form])
    tensors = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    arrays = {}

    def array(name):
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(tensors[name]).copy()
        return arrays[name]

    for node in model.graph.node:
        if node.op_type not in ("Attention", "MultiHeadAttention"):
            continue
        out = next(n for n in model.graph.node if node.output[0] in n.input and n.op_type == "MatMul")
        if node.op_type == "Attention":
            packed = array(node.input[1])
            parts = {p: packed[:, i * HIDDEN:(i + 1) * HIDDEN] for i, p in enumerate("qkv")}
        else:
            parts = {p: array(producer[node.input[i]].input[1]) for i, p in enumerate("qkv")}
        bias_name = node.input[2] if node.op_type == "Attention" else node.input[3]
        edit({**parts, "bias": array(bias_name), "out": array(out.input[1])})
    for name, values in arrays.items():
        tensors[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))
    return model


def model_for(form: str, tmp_path, edit=None) -> str:
    """`edit(arrays)` as in bert_with (for the GQA graphs: on the weight dict, units of KV groups)."""
    if form in BERT:
        model = bert_with(form, edit) if edit else onnx.load(BERT[form])
    else:
        model = grouped_query_graph(form, edit)
    path = tmp_path / f"{form}.onnx"
    onnx.save(model, path)
    return str(path)


def feeds(form: str, batch: int = 3, sequence: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    if form in BERT:
        mask = np.ones((batch, sequence), dtype=np.int64)
        mask[0, sequence // 2:] = 0  # right padding
        return {"input_ids": rng.integers(0, 1000, (batch, sequence)), "attention_mask": mask}
    return {"x": rng.standard_normal((batch, sequence, HIDDEN)).astype(np.float32)}


def units(form: str) -> int:
    return HEADS if form in BERT else KV_HEADS


def only_heads(path: str, form: str) -> tuple[str, ...]:
    groups = onnxfuse.inspect(path)["groups"]
    return tuple(p for g in groups if g["prunable"] and g["width"] != units(form) for p in g["producers"])


def attention_attrs(model: onnx.ModelProto) -> list[dict]:
    return [{a.name: oh.get_attribute_value(a) for a in n.attribute} for n in model.graph.node
            if n.op_type in ("Attention", "MultiHeadAttention", "GroupQueryAttention")]


@pytest.mark.parametrize("form", FORMS)
def test_inspect_finds_the_heads_of_fused_attention(tmp_path, form):
    report = onnxfuse.inspect(model_for(form, tmp_path))
    prunable = sorted(g["width"] for g in report["groups"] if g["prunable"])
    if form in BERT:  # heads of both layers, the hidden width and the pooler, the FFNs
        assert prunable == [HEADS, HEADS, HIDDEN, HIDDEN, 2 * HIDDEN, 2 * HIDDEN]
    else:  # the KV groups; x and y are the graph's interface
        assert prunable == [KV_HEADS]


@pytest.mark.parametrize("form", FORMS)
def test_sparsity_zero_reproduces_and_half_runs_at_any_batch_and_sequence(tmp_path, form):
    path = model_for(form, tmp_path)
    original = onnx.load(path)
    same, _ = onnxfuse.compress(path, sparsity=0.0, quiet=True)
    np.testing.assert_allclose(run(same, feeds(form))[0], run(original, feeds(form))[0], rtol=1e-5, atol=1e-5)
    for method in ("prune", "fuse"):
        small, report = onnxfuse.compress(path, sparsity=0.5, method=method, quiet=True)
        onnx.checker.check_model(small, full_check=True)
        assert [i.name for i in small.graph.input] == [i.name for i in original.graph.input]
        assert [o.name for o in small.graph.output] == [o.name for o in original.graph.output]
        heads = [a.get("num_heads", a.get("q_num_heads")) for a in attention_attrs(small)]
        assert heads == [HEADS // 2] * 2 if form in BERT else [Q_HEADS // 2]
        for batch, sequence in ((1, 5), (4, 30)):
            assert run(small, feeds(form, batch, sequence))[0].shape[0] == batch
        assert report["macs_after"] < 0.6 * report["macs_before"]


def zero_unit(form: str, unit: int):
    """Head `unit` (a KV group for the GQA graphs: its K/V head and the query heads that read it) zeroed
    in Q, K, V, their biases and the output projection's rows."""
    def bert(arrays):
        for p, part in enumerate("qkv"):
            arrays[part][:, head_blocks(unit, HEAD)] = 0
            arrays["bias"][p * HIDDEN:(p + 1) * HIDDEN][head_blocks(unit, HEAD)] = 0
        arrays["out"][head_blocks(unit, HEAD)] = 0

    def grouped(weights):
        ratio = Q_HEADS // KV_HEADS
        weights["wq"][:, head_blocks(unit, ratio * HEAD)] = 0
        weights["wk"][:, head_blocks(unit, HEAD)] = 0
        weights["wv"][:, head_blocks(unit, HEAD)] = 0
        weights["wo"][head_blocks(unit, ratio * HEAD)] = 0
    return bert if form in BERT else grouped


@pytest.mark.parametrize("form", FORMS)
def test_removing_zeroed_heads_reproduces_the_outputs(tmp_path, form):
    path = model_for(form, tmp_path, zero_unit(form, 1))
    small, report = onnxfuse.compress(path, sparsity=1 / units(form), ignore=only_heads(path, form), quiet=True)
    assert all(g["kept"] == units(form) - 1 for g in report["groups"] if g["prunable"])
    np.testing.assert_allclose(run(small, feeds(form))[0], run(onnx.load(path), feeds(form))[0], atol=1e-4)


def duplicate_units(form: str):
    """Units 2 and 3 (BERT heads) or 1 (GQA's KV group) copy the Q, K, V (and biases) of 0 and 1 (0);
    their output projections differ: merging each copy into its original sums them, which is exact."""
    def bert(arrays):
        for source, copy in ((0, 2), (1, 3)):
            for p, part in enumerate("qkv"):
                arrays[part][:, head_blocks(copy, HEAD)] = arrays[part][:, head_blocks(source, HEAD)]
                bias = arrays["bias"][p * HIDDEN:(p + 1) * HIDDEN]
                bias[head_blocks(copy, HEAD)] = bias[head_blocks(source, HEAD)]

    def grouped(weights):
        ratio = Q_HEADS // KV_HEADS
        weights["wq"][:, head_blocks(1, ratio * HEAD)] = weights["wq"][:, head_blocks(0, ratio * HEAD)]
        for w in ("wk", "wv"):
            weights[w][:, head_blocks(1, HEAD)] = weights[w][:, head_blocks(0, HEAD)]
    return bert if form in BERT else grouped


@pytest.mark.parametrize("form", FORMS)
def test_merging_duplicate_heads_reproduces_the_outputs(tmp_path, form):
    path = model_for(form, tmp_path, duplicate_units(form))
    want = run(onnx.load(path), feeds(form))[0]
    fused, report = onnxfuse.compress(path, sparsity=0.5, method="fuse", ignore=only_heads(path, form),
                                      normalization="average", fuse_keep="cover", quiet=True)
    assert all(g["kept"] == units(form) // 2 for g in report["groups"] if g["prunable"])
    np.testing.assert_allclose(run(fused, feeds(form))[0], want, atol=1e-4)
    pruned, _ = onnxfuse.compress(path, sparsity=0.5, method="prune", ignore=only_heads(path, form), quiet=True)
    assert np.abs(run(pruned, feeds(form))[0] - want).max() > 1e-2  # dropping them is not exact


def reordered_units(form: str):
    """As duplicate_units, with each copy's D channels reordered: one order for Q and K (under GQA in
    every query head of the group), another for V."""
    rng = np.random.default_rng(1)
    qk, v = rng.permutation(HEAD), rng.permutation(HEAD)

    def bert(arrays):
        for source, copy in ((0, 2), (1, 3)):
            for p, (part, order) in enumerate(zip("qkv", (qk, qk, v))):
                arrays[part][:, head_blocks(copy, HEAD)] = arrays[part][:, head_blocks(source, HEAD)][:, order]
                bias = arrays["bias"][p * HIDDEN:(p + 1) * HIDDEN]
                bias[head_blocks(copy, HEAD)] = bias[head_blocks(source, HEAD)][order]

    def grouped(weights):
        ratio = Q_HEADS // KV_HEADS
        per_head = np.concatenate([g * HEAD + qk for g in range(ratio)])
        weights["wq"][:, head_blocks(1, ratio * HEAD)] = weights["wq"][:, head_blocks(0, ratio * HEAD)][:, per_head]
        for w, order in (("wk", qk), ("wv", v)):
            weights[w][:, head_blocks(1, HEAD)] = weights[w][:, head_blocks(0, HEAD)][:, order]
    return bert if form in BERT else grouped


@pytest.mark.parametrize("form", FORMS)
def test_merging_heads_that_hold_their_channels_in_another_order_reproduces_the_outputs(tmp_path, form,
                                                                                      monkeypatch):
    """Each copy is aligned onto its original before they merge (methods/head_alignment.py)."""
    path = model_for(form, tmp_path, reordered_units(form))
    want = run(onnx.load(path), feeds(form))[0]
    options = dict(sparsity=0.5, method="fuse", ignore=only_heads(path, form), normalization="average",
                   fuse_keep="cover", quiet=True)
    fused, report = onnxfuse.compress(path, **options)
    assert all(g["kept"] == units(form) // 2 for g in report["groups"] if g["prunable"])
    np.testing.assert_allclose(run(fused, feeds(form))[0], want, atol=1e-4)
    from onnxfuse.methods import intra_fusion

    monkeypatch.setattr(intra_fusion.HeadAlignment, "build", classmethod(lambda cls, *args: None))
    unaligned, _ = onnxfuse.compress(path, **options)
    assert np.abs(run(unaligned, feeds(form))[0] - want).max() > 1e-2


@pytest.mark.parametrize("form", FORMS)
def test_the_mac_estimate_counts_the_fused_products(tmp_path, form):
    from onnxfuse import pipeline
    from onnxfuse.planning.counts import estimated_mac_ratio

    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(sparsity=0.5, validate=False),
                                                  model_for(form, tmp_path)))
    products = [n for n in ctx.model.analysis.node_macs if n.endswith("#products")]
    assert len(products) == (2 if form in BERT else 1)
    counts = {gid: len(keep) for gid, keep in ctx.decisions.keep.items()}
    actual = ctx.report["macs_after"] / ctx.report["macs_before"]
    assert estimated_mac_ratio(ctx.model.analysis, counts) == pytest.approx(actual, rel=1e-9)


def test_a_kv_cache_freezes_the_heads_with_the_reason(tmp_path):
    """GroupQueryAttention whose present K/V are graph outputs (a decoder's cache): the KV heads are
    the interface, so they stay."""
    model = grouped_query_graph("gqa")
    cache = oh.make_tensor_value_info("pk", TensorProto.FLOAT, ["batch", KV_HEADS, "sequence", HEAD])
    model.graph.output.append(cache)
    path = tmp_path / "cache.onnx"
    onnx.save(model, path)
    [heads] = [g for g in onnxfuse.inspect(str(path))["groups"] if g["width"] == KV_HEADS]
    assert not heads["prunable"] and "graph output" in heads["frozen"]


@pytest.mark.parametrize("form", ["attention", "gqa"])
def test_activation_importance_of_a_head_is_its_mean_output_with_calibration_data(tmp_path, form):
    """`--importance act` with --calib scores a head (KV group) by the mean |value| of its block of the
    attention output, where the output projection reads it; `signal` weighs that by the projection's
    rows. Computed here from ONNX Runtime's attention output on the same data."""
    from onnxfuse import pipeline
    from onnxfuse.calibration.capture import outputs_only

    path = model_for(form, tmp_path)
    calib = {k: np.concatenate([v, v[:, ::-1]]) for k, v in feeds(form, batch=4, sequence=10, seed=3).items()}
    np.savez(tmp_path / "calib.npz", **calib)
    model = onnx.load(path)
    attention = [n for n in model.graph.node if n.op_type in ("Attention", "GroupQueryAttention")][0]
    block = HEAD * (1 if form in BERT else Q_HEADS // KV_HEADS)
    context = run(outputs_only(model, [attention.output[0]]), calib)[0]
    want = np.abs(context).reshape(-1, context.shape[-1]).mean(axis=0).reshape(units(form), block).mean(axis=1)
    projection = next(n for n in model.graph.node if attention.output[0] in n.input)
    rows = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == projection.input[1]))
    reads = np.abs(rows).reshape(units(form), -1).sum(axis=1)  # the L1 of each unit's rows
    for importance in ("act", "signal"):
        options = pipeline.Options(sparsity=0.5, importance=importance, calib=str(tmp_path / "calib.npz"))
        ctx = pipeline.run(pipeline.Context.for_model(options, path), stop_after="score")
        group = next(g for g in ctx.model.analysis.prunable if (attention.output[0], 2) in g.positions)
        scores = ctx.decisions.scores[group.id]
        expected = want if importance == "act" else want * reads
        np.testing.assert_allclose(scores, expected / expected.mean(), rtol=1e-4)


def test_round_to_counts_a_head_as_its_channels(tmp_path):
    """--round-to 8 with heads of 8 features: any head count keeps Q, K, V and the output a multiple of
    8 channels, so heads still shrink one by one; the FFN and the hidden width round to 8."""
    path = model_for("attention", tmp_path)
    _, report = onnxfuse.compress(path, sparsity=0.7, round_to=8, layernorm_width="shrink", quiet=True,
                                  validate=False)
    kept = sorted((g["width"], g["kept"]) for g in report["groups"] if g["prunable"])
    assert kept == [(HEADS, 1), (HEADS, 1), (HIDDEN, 8), (HIDDEN, 8), (2 * HIDDEN, 16), (2 * HIDDEN, 16)]
    _, report = onnxfuse.compress(path, sparsity=0.7, round_to=8, quiet=True, validate=False)
    hidden = [g for g in report["groups"] if g.get("normalised")]  # by the Skip/EmbedLayerNormalization ops
    assert hidden and all(not g["prunable"] and "kept whole" in g["frozen"] for g in hidden)


def test_the_fused_bert_compresses_with_calibration_and_trains(tmp_path):
    """The whole path on integer token inputs: sensitivity allocation and lsq on calibration rows,
    then a few distillation steps in the torch view of ONNX Runtime's fused ops."""
    pytest.importorskip("torch")
    np.savez(tmp_path / "tokens.npz", **feeds("attention", batch=32, sequence=16, seed=1))
    data = str(tmp_path / "tokens.npz")
    model, report = onnxfuse.compress(str(BERT["attention"]), target_macs=0.5, calib=data, train_data=data,
                                      train_steps=3, batch=8, quiet=True)
    assert report["train"]["steps"] == 3 and report["macs_after"] <= 0.5 * report["macs_before"]
    assert run(model, feeds("attention", batch=2, sequence=9))[0].shape == (2, 3)
