"""Transformers: attention heads, FFN neurons and the hidden width of a small ViT (models/zoo.py,
random weights) in nine export forms: attention written out with the head count a literal or -1 in
the head-split Reshape (at opset 17, and 14 where LayerNorm is written out), nn.MultiheadAttention
(heads folded into the batch axis, packed QKV picked with Gather) through the TorchScript exporter
(targets computed from Shape ops) and the dynamo one, F.scaled_dot_product_attention (TorchScript at
17 and 21, dynamo), and the written-out form after ONNX Runtime's transformer optimizer
(SkipLayerNormalization, BiasGelu); and hand-built graphs for packed QKV by Split and by Gemm."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import onnxfuse  # noqa: E402
from tests.helpers import run  # noqa: E402

DIM, HEADS, DEPTH = 32, 4, 2
HEAD = DIM // HEADS
FORMS = ("manual", "manual-1", "mha", "dynamo", "ort-optimized", "opset14",  # opset 14: LayerNorm as ReduceMean
         "sdpa", "sdpa-21", "sdpa-dynamo")  # F.scaled_dot_product_attention: TorchScript at 17 and 21, dynamo


def vit(form: str, edit=None, seed: int = 0):
    """A 2-block ViT of width 32 with 4 heads; `edit(attention_module, block)` changes its weights."""
    from models.zoo import ViT

    torch.manual_seed(seed)
    model = ViT(width=DIM / 128, depth=DEPTH, heads=HEADS, attention=form).eval()
    with torch.no_grad():
        for p in model.parameters():  # trained-looking scales, not the initialiser's near-zero biases
            p.add_(0.05 * torch.randn_like(p))
        for block in model.blocks:
            if edit:
                edit(block.attn.mha, block)
    return model


def export(model, path, form: str) -> str:
    if form in ("dynamo", "sdpa-dynamo"):
        for block in model.blocks:
            block.attn.form = "mha" if form == "dynamo" else "sdpa"
        pytest.importorskip("onnxscript")
        torch.onnx.export(model, (torch.rand(2, 1, 28, 28) * 255,), str(path), opset_version=18,
                          input_names=["input"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False)
        return str(path)
    opset = {"opset14": 14, "sdpa-21": 21}.get(form, 17)
    torch.onnx.export(model, (torch.rand(2, 1, 28, 28) * 255,), str(path), opset_version=opset,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return str(path)


def exported(tmp_path, form: str, edit=None) -> str:
    if form == "ort-optimized":  # ONNX Runtime's transformer optimizer: SkipLayerNormalization, BiasGelu
        from onnxruntime.transformers.optimizer import optimize_model

        path = export(vit("manual", edit), tmp_path / "exported.onnx", "manual")
        optimize_model(path, model_type="vit", num_heads=HEADS, hidden_size=DIM, opt_level=0,
                       use_gpu=False).save_model_to_file(str(tmp_path / "vit.onnx"))
        return str(tmp_path / "vit.onnx")
    if form == "opset14":
        return export(vit("manual", edit), tmp_path / "vit.onnx", form)
    base = {"dynamo": "mha", "sdpa-21": "sdpa", "sdpa-dynamo": "sdpa"}.get(form, form)
    return export(vit(base, edit), tmp_path / "vit.onnx", form)


def only_heads(path: str) -> tuple[str, ...]:
    """--ignore patterns (node names) that freeze the FFN and hidden groups, so that only heads shrink."""
    groups = onnxfuse.inspect(path)["groups"]
    return tuple(p for g in groups if g["prunable"] and g["width"] != HEADS for p in g["producers"])


def images(n: int = 5, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 1, 28, 28)) * 255).astype(np.float32)


def _head_rows(h: int) -> list[slice]:
    """The rows of head h in the packed in_proj weight: its Q, K and V blocks."""
    return [slice(part * DIM + h * HEAD, part * DIM + (h + 1) * HEAD) for part in range(3)]


@pytest.mark.parametrize("form", FORMS)
def test_inspect_finds_heads_ffn_and_hidden_groups(tmp_path, form):
    report = onnxfuse.inspect(exported(tmp_path, form))
    prunable = [g for g in report["groups"] if g["prunable"]]
    heads = [g for g in prunable if g["width"] == HEADS]
    assert len(heads) == DEPTH and all(len(g["producers"]) == 1 and len(g["consumers"]) == 1 for g in heads), heads
    assert len([g for g in prunable if g["width"] == 2 * DIM]) == DEPTH  # the FFN neurons
    [hidden] = [g for g in prunable if g["width"] == DIM]
    assert len(hidden["producers"]) == 1 + 2 * DEPTH  # patch conv, every output projection and fc2
    inner = [g for g in report["groups"] if not g["prunable"] and g["width"] == HEAD]
    assert inner and all("blocks are kept or removed whole" in g["frozen"] for g in inner)
    assert report["prunable_mac_share"] > 0.65  # the rest: Q·Kᵀ and A·V, which shrink with the heads


@pytest.mark.parametrize("form", FORMS)
def test_sparsity_zero_reproduces_and_half_gives_a_valid_smaller_model(tmp_path, form):
    path = exported(tmp_path, form)
    want = run(onnx.load(path), images())[0]
    same, _ = onnxfuse.compress(path, sparsity=0.0, quiet=True)  # the rewritten attention: same values
    np.testing.assert_allclose(run(same, images())[0], want, rtol=1e-5, atol=1e-5)
    # without data, pruning keeps the LayerNorm-normalised hidden width whole (pipeline/defaults.py)
    for method, width, hidden, macs in (("prune", "auto", DIM, 0.6), ("prune", "shrink", DIM // 2, 0.35),
                                        ("fuse", "auto", DIM // 2, 0.35)):
        small, report = onnxfuse.compress(path, sparsity=0.5, method=method, layernorm_width=width, quiet=True)
        onnx.checker.check_model(small, full_check=True)
        assert [i.name for i in small.graph.input] == ["input"] and [o.name for o in small.graph.output] == ["logits"]
        kept = {g["width"]: g.get("kept", g["width"]) for g in report["groups"] if g["prunable"] or g.get("normalised")}
        assert kept == {HEADS: HEADS // 2, 2 * DIM: DIM, DIM: hidden}
        assert (report.get("kept_whole") is not None) == (hidden == DIM)
        assert report["macs_after"] < macs * report["macs_before"]
        for batch in (1, 7):  # dynamic batch
            assert run(small, images(batch))[0].shape == (batch, 10)


@pytest.mark.parametrize("form", FORMS)
def test_removing_zeroed_heads_reproduces_the_outputs(tmp_path, form):
    def zero_head(mha, block):
        with torch.no_grad():
            for rows in _head_rows(1):
                mha.in_proj_weight[rows] = 0
                mha.in_proj_bias[rows] = 0
            mha.out_proj.weight[:, HEAD:2 * HEAD] = 0

    path = exported(tmp_path, form, zero_head)
    small, report = onnxfuse.compress(path, sparsity=0.25, ignore=only_heads(path), quiet=True)
    assert [g["kept"] for g in report["groups"] if g["prunable"]] == [HEADS - 1] * DEPTH
    np.testing.assert_allclose(run(small, images())[0], run(onnx.load(path), images())[0], atol=1e-4)


@pytest.mark.parametrize("form", FORMS)
def test_merging_duplicate_heads_reproduces_the_outputs(tmp_path, form):
    """Heads 2 and 3 copy the Q, K and V of heads 0 and 1 (their output projections differ): fusing
    each copy into its original sums their output-projection columns, which is exact."""
    def duplicate_heads(mha, block):
        with torch.no_grad():
            for source, copy in ((0, 2), (1, 3)):
                for src, dst in zip(_head_rows(source), _head_rows(copy)):
                    mha.in_proj_weight[dst] = mha.in_proj_weight[src]
                    mha.in_proj_bias[dst] = mha.in_proj_bias[src]

    path = exported(tmp_path, form, duplicate_heads)
    fused, report = onnxfuse.compress(path, sparsity=0.5, method="fuse", ignore=only_heads(path),
                                      normalization="average", fuse_keep="cover", quiet=True)
    assert [g["kept"] for g in report["groups"] if g["prunable"]] == [HEADS // 2] * DEPTH
    np.testing.assert_allclose(run(fused, images())[0], run(onnx.load(path), images())[0], atol=1e-4)
    pruned, _ = onnxfuse.compress(path, sparsity=0.5, method="prune", ignore=only_heads(path), quiet=True)
    assert np.abs(run(pruned, images())[0] - run(onnx.load(path), images())[0]).max() > 1e-2  # dropping is not


@pytest.mark.parametrize("form", FORMS)
def test_merging_heads_that_hold_their_channels_in_another_order_reproduces_the_outputs(tmp_path, form,
                                                                                      monkeypatch):
    """Heads 2 and 3 are heads 0 and 1 with their D channels reordered, one order for Q and K and
    another for V (the output projections differ): a head is aligned onto the one it merges into
    before they are averaged (Imfeld et al.), which makes the merge exact; unaligned, it is not."""
    rng = np.random.default_rng(0)
    orders = rng.permutation(HEAD), rng.permutation(HEAD)

    def reordered_copies(mha, block):
        with torch.no_grad():
            for source, copy in ((0, 2), (1, 3)):
                for src, dst, order in zip(_head_rows(source), _head_rows(copy), (orders[0], orders[0], orders[1])):
                    mha.in_proj_weight[dst] = mha.in_proj_weight[src][order]
                    mha.in_proj_bias[dst] = mha.in_proj_bias[src][order]

    path = exported(tmp_path, form, reordered_copies)
    want = run(onnx.load(path), images())[0]
    options = dict(sparsity=0.5, method="fuse", ignore=only_heads(path), normalization="average",
                   fuse_keep="cover", quiet=True)
    fused, report = onnxfuse.compress(path, **options)
    assert [g["kept"] for g in report["groups"] if g["prunable"]] == [HEADS // 2] * DEPTH
    np.testing.assert_allclose(run(fused, images())[0], want, atol=1e-4)
    from onnxfuse.methods import intra_fusion

    monkeypatch.setattr(intra_fusion.HeadAlignment, "build", classmethod(lambda cls, *args: None))
    unaligned, _ = onnxfuse.compress(path, **options)
    assert np.abs(run(unaligned, images())[0] - want).max() > 1e-2


def test_merging_a_copy_with_heads_and_their_channels_reordered_recovers_the_original(tmp_path, monkeypatch):
    """Model merge (--align weights): the copy computes the same function with its heads in another
    order and each head's D channels reordered (Q and K alike, V and the output projection alike);
    matching heads after aligning their channels (Imfeld et al.) recovers the original exactly."""
    rng = np.random.default_rng(2)
    heads, qk, v = rng.permutation(HEADS), rng.permutation(HEAD), rng.permutation(HEAD)

    def reordered(mha, block):
        with torch.no_grad():
            w, b, out = mha.in_proj_weight.clone(), mha.in_proj_bias.clone(), mha.out_proj.weight.clone()
            for new, old in enumerate(heads):
                for part, order in enumerate((qk, qk, v)):
                    dst, src = _head_rows(new)[part], _head_rows(old)[part]
                    mha.in_proj_weight[dst] = w[src][order]
                    mha.in_proj_bias[dst] = b[src][order]
                mha.out_proj.weight[:, new * HEAD:(new + 1) * HEAD] = out[:, old * HEAD:(old + 1) * HEAD][:, v]

    original = export(vit("manual"), tmp_path / "a.onnx", "manual")
    copy = export(vit("manual", reordered), tmp_path / "b.onnx", "manual")
    want = run(onnx.load(original), images())[0]
    np.testing.assert_allclose(run(onnx.load(copy), images())[0], want, rtol=1e-4, atol=1e-4)
    merged, _ = onnxfuse.merge([original, copy], align="weights")
    np.testing.assert_allclose(run(merged, images())[0], want, rtol=1e-4, atol=1e-4)
    from onnxfuse.methods import merge

    monkeypatch.setattr(merge.HeadAlignment, "build", classmethod(lambda cls, *args, **kw: None))
    unaligned, _ = onnxfuse.merge([original, copy], align="weights")
    assert np.abs(run(unaligned, images())[0] - want).max() > 1e-2


def hand_written_attention(scale_d: bool = False, packed: str | None = None) -> onnx.ModelProto:
    """x (B, 6, 32) → Q, K, V → 4 heads of 8 → softmax(Q·Kᵀ)·V → merge → output projection; with
    `scale_d` Q is multiplied by a constant over its 8 head channels first; `packed`: Q, K and V
    from one weight, by MatMul then Split ("split"), or by Gemm on the flattened tokens then
    Split ("gemm")."""
    from onnx import TensorProto, numpy_helper
    from onnx import helper as oh

    rng = np.random.default_rng(0)
    weights = {w: (0.3 * rng.standard_normal((DIM, DIM))).astype(np.float32) for w in ("wq", "wk", "wv", "wo")}
    weights["split"], weights["merge"] = np.array([0, 0, HEADS, HEAD]), np.array([0, 0, DIM])
    weights["scale"] = rng.uniform(0.5, 2, HEAD).astype(np.float32)
    if packed:
        weights["wqkv"] = np.concatenate([weights.pop(w) for w in ("wq", "wk", "wv")], axis=1)
        weights["bqkv"] = (0.1 * rng.standard_normal(3 * DIM)).astype(np.float32)
        weights["sizes"], weights["rows"], weights["tokens"] = np.array([DIM] * 3), np.array([-1, DIM]), \
            np.array([-1, 6, 3 * DIM])
        if packed == "split":
            nodes = [oh.make_node("MatMul", ["x", "wqkv"], ["qkv0"]), oh.make_node("Add", ["qkv0", "bqkv"], ["qkv"])]
        else:
            nodes = [oh.make_node("Reshape", ["x", "rows"], ["x2"]),
                     oh.make_node("Gemm", ["x2", "wqkv", "bqkv"], ["qkv2"]),
                     oh.make_node("Reshape", ["qkv2", "tokens"], ["qkv"])]
        nodes.append(oh.make_node("Split", ["qkv", "sizes"], ["q", "k", "v"], axis=2))
    else:
        nodes = [oh.make_node("MatMul", ["x", f"w{t}"], [t]) for t in "qkv"]
    nodes += [oh.make_node("Reshape", [t, "split"], [f"{t}4"]) for t in "qkv"]
    q = "q4"
    if scale_d:
        nodes.append(oh.make_node("Mul", ["q4", "scale"], ["q4s"]))
        q = "q4s"
    nodes += [oh.make_node("Transpose", [q], ["qt"], perm=[0, 2, 1, 3]),
              oh.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
              oh.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
              oh.make_node("MatMul", ["qt", "kt"], ["scores"]), oh.make_node("Softmax", ["scores"], ["p"], axis=-1),
              oh.make_node("MatMul", ["p", "vt"], ["context"]),
              oh.make_node("Transpose", ["context"], ["ct"], perm=[0, 2, 1, 3]),
              oh.make_node("Reshape", ["ct", "merge"], ["merged"]), oh.make_node("MatMul", ["merged", "wo"], ["y"])]
    x, y = (oh.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 6, DIM]) for n in "xy")
    graph = oh.make_graph(nodes, "attention", [x], [y], [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


@pytest.mark.parametrize("packed", ("split", "gemm"))
def test_packed_qkv_by_split_or_gemm_gives_head_groups(packed):
    """One QKV weight, then Split (after a MatMul, or a Gemm on the flattened tokens): the heads are a
    group (Q, K and V are Offset parts of the packed output), sparsity 0 reproduces, zeroed heads are
    removed exactly and 0.5 runs at any batch."""
    model = hand_written_attention(packed=packed)
    x = {"x": np.random.default_rng(1).standard_normal((3, 6, DIM)).astype(np.float32)}
    [heads] = [g for g in onnxfuse.inspect(model)["groups"] if g["prunable"] and g["width"] == HEADS]
    same, _ = onnxfuse.compress(model, sparsity=0.0, quiet=True)
    np.testing.assert_allclose(run(same, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-5)
    zeroed = onnx.load_from_string(model.SerializeToString())
    arrays = {t.name: t for t in zeroed.graph.initializer}
    w, b = onnx.numpy_helper.to_array(arrays["wqkv"]).copy(), onnx.numpy_helper.to_array(arrays["bqkv"]).copy()
    for part in range(3):
        w[:, part * DIM + HEAD:part * DIM + 2 * HEAD] = 0
        b[part * DIM + HEAD:part * DIM + 2 * HEAD] = 0
    arrays["wqkv"].CopyFrom(onnx.numpy_helper.from_array(w, "wqkv"))
    arrays["bqkv"].CopyFrom(onnx.numpy_helper.from_array(b, "bqkv"))
    small, report = onnxfuse.compress(zeroed, sparsity=0.25, quiet=True)
    assert [g["kept"] for g in report["groups"] if g["prunable"] and g["width"] == HEADS] == [HEADS - 1]
    np.testing.assert_allclose(run(small, x)[0], run(zeroed, x)[0], rtol=1e-4, atol=1e-4)
    half, _ = onnxfuse.compress(model, sparsity=0.5, method="fuse", quiet=True)
    onnx.checker.check_model(half, full_check=True)
    assert run(half, {"x": x["x"][:1]})[0].shape == (1, 6, DIM)


@pytest.mark.parametrize("scale_d", (False, True))
def test_heads_are_aligned_only_where_nothing_but_the_attention_products_touch_their_channels(scale_d):
    """A constant over a head's channels ties each coordinate to its place: then heads merge unaligned."""
    from onnxfuse import pipeline

    ctx = pipeline.Context.for_model(pipeline.Options(sparsity=0.5, method="fuse"), hand_written_attention(scale_d))
    ctx = pipeline.run(ctx)
    [heads] = [g for g in ctx.model.analysis.prunable if g.width == HEADS]
    if scale_d:
        assert heads.coords is None
    else:  # Q and K read one order, V and the output projection another
        systems = {space[0]: set(np.unique(c // (1 << 20)).tolist()) for space, c in heads.coords.items()}
        assert systems["q"] == systems["k"] != systems["v"] == systems["merged"] and len(systems["q"]) == 1
    x = np.random.default_rng(1).standard_normal((2, 6, DIM)).astype(np.float32)
    assert run(ctx.model.result, {"x": x})[0].shape == (2, 6, DIM)


@pytest.mark.parametrize("form", FORMS)
def test_the_mac_estimate_counts_the_attention_products(tmp_path, form):
    """Q·Kᵀ and A·V shrink with the heads: the planner's estimate is the MAC count of what it writes."""
    from onnxfuse import pipeline
    from onnxfuse.planning.counts import estimated_mac_ratio

    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(sparsity=0.5, validate=False),
                                                  exported(tmp_path, form)))
    counts = {gid: len(keep) for gid, keep in ctx.decisions.keep.items()}
    products = [n for n in ctx.model.analysis.product_spaces if n in ctx.model.analysis.node_macs]
    assert len(products) == 2 * DEPTH
    actual = ctx.report["macs_after"] / ctx.report["macs_before"]
    assert estimated_mac_ratio(ctx.model.analysis, counts) == pytest.approx(actual, rel=1e-9)


def test_text_encoder_with_mask_and_dynamic_sequence(tmp_path):
    """A BERT-style encoder (input_ids, attention_mask; batch and sequence dynamic): heads, FFN, the
    pooler and the hidden width, which token and position embedding tables write; 0.5 runs at any
    batch and sequence length, 0 reproduces."""
    from models.zoo import TextEncoder

    torch.manual_seed(0)
    model = TextEncoder().eval()
    ids, mask = torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.int64)
    path = str(tmp_path / "encoder.onnx")
    dynamic = {0: "batch", 1: "sequence"}
    torch.onnx.export(model, (ids, mask), path, opset_version=17, input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic,
                                                             "logits": {0: "batch"}}, dynamo=False)
    groups = onnxfuse.inspect(path)["groups"]
    prunable = sorted(g["width"] for g in groups if g["prunable"])
    assert prunable == [4, 4, 64, 64, 256, 256]  # heads, the pooler and the hidden width, FFN
    hidden = next(g for g in groups if g["prunable"] and "/tokens/Gather" in g["producers"])
    assert "/positions/Gather" in hidden["producers"]

    def feeds(batch, sequence):
        rng = np.random.default_rng(sequence)
        attention = np.ones((batch, sequence), dtype=np.int64)
        attention[0, sequence // 2:] = 0
        return {"input_ids": rng.integers(0, 1000, (batch, sequence)), "attention_mask": attention}

    import onnxruntime as ort

    want = ort.InferenceSession(path)
    same, _ = onnxfuse.compress(path, sparsity=0.0, quiet=True)
    small, report = onnxfuse.compress(path, sparsity=0.5, method="fuse", quiet=True)
    onnx.checker.check_model(small, full_check=True)
    assert report["macs_after"] < 0.4 * report["macs_before"]
    for batch, sequence in ((1, 5), (3, 40)):
        expected = want.run(None, feeds(batch, sequence))[0]
        got = ort.InferenceSession(same.SerializeToString()).run(None, feeds(batch, sequence))[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert ort.InferenceSession(small.SerializeToString()).run(None, feeds(batch, sequence))[0].shape == (batch, 2)
