"""Export the trained ViT (models/checkpoints/vit_fmnist.pt, from `python -m models.train --arch vit`)
in the forms users have, each checked against torch on the evaluation sample (<= 1e-4):

    vit_fmnist_mha.onnx        nn.MultiheadAttention, TorchScript exporter, opset 17
    vit_fmnist_dynamo.onnx     nn.MultiheadAttention, dynamo exporter, opset 18
    vit_fmnist_manual.onnx     attention written out (view(B, S, H, D)), TorchScript, opset 17
    vit_fmnist_ortopt.onnx     the written-out form after ONNX Runtime's transformer optimizer
                               (SkipLayerNormalization, BiasGelu)
    vit_fmnist_fused.onnx      the written-out form with each block's attention (from the packed
                               in-projection to the output projection's input) one com.microsoft
                               Attention op, the form onnxsim's head pruning reads (ONNX Runtime's
                               optimizer does not fuse this pre-LN pattern itself)

    python -m models.export_vit [--out DIR] [--checkpoint PT]      (default: models/)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch

from . import fmnist
from .zoo import build

MODELS_DIR = Path(__file__).resolve().parent
FORMS = ("mha", "dynamo", "manual", "ortopt", "fused")
CHECKPOINT = MODELS_DIR / "checkpoints" / "vit_fmnist.pt"


def load_vit(form: str = "mha", checkpoint: Path = CHECKPOINT):
    checkpoint = torch.load(checkpoint, map_location="cpu")
    model = build("vit", checkpoint["width"])
    model.load_state_dict(checkpoint["state_dict"])
    for block in model.blocks:
        block.attn.form = form
    return model.eval()


def export(form: str, path: Path, checkpoint: Path = CHECKPOINT) -> Path:
    dummy = torch.rand(2, 1, 28, 28) * 255
    names = dict(input_names=["input"], output_names=["logits"])
    if form == "dynamo":
        torch.onnx.export(load_vit("mha", checkpoint), (dummy,), str(path), opset_version=18, dynamo=True,
                          external_data=False, dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, **names)
    elif form == "ortopt":
        from onnxruntime.transformers.optimizer import optimize_model

        plain = path.with_suffix(".plain.onnx")
        export("manual", plain, checkpoint)
        model = load_vit(checkpoint=checkpoint)
        optimize_model(str(plain), model_type="vit", num_heads=model.blocks[0].attn.heads,
                       hidden_size=model.head.in_features, opt_level=0, use_gpu=False).save_model_to_file(str(path))
        plain.unlink()
    elif form == "fused":
        plain = path.with_suffix(".plain.onnx")
        export("manual", plain, checkpoint)
        onnx.save(fuse_attention(onnx.load(plain), load_vit(checkpoint=checkpoint).blocks[0].attn.heads), path)
        plain.unlink()
    else:
        torch.onnx.export(load_vit(form, checkpoint), (dummy,), str(path), opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names)
    return path


def fuse_attention(model: onnx.ModelProto, heads: int) -> onnx.ModelProto:
    """Each block's attention as one com.microsoft Attention: the packed in-projection MatMul's weight
    and the bias Add's constant become its weight and bias (torch packs Q, K, V head-major as ONNX
    Runtime does), its output feeds the output projection; the written-out nodes between go."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    for node in [n for n in graph.nodes if n.op == "MatMul" and n.name.endswith("/attn/MatMul")]:
        scope = node.name[: -len("MatMul")]
        bias_add = node.outputs[0].outputs[0]
        bias = next(t for t in bias_add.inputs if isinstance(t, gs.Constant))
        width = node.inputs[1].shape[0]
        out_proj = next(n for n in graph.nodes if n.name.startswith(scope) and n.op == "MatMul"
                        and isinstance(n.inputs[1], gs.Constant) and tuple(n.inputs[1].shape) == (width, width))
        attended = gs.Variable(f"{scope}attention_output", dtype=np.float32)
        graph.nodes.append(gs.Node("Attention", f"{scope}Attention", {"num_heads": heads},
                                   [node.inputs[0], node.inputs[1], bias], [attended], domain="com.microsoft"))
        out_proj.inputs[0] = attended
    graph.cleanup().toposort()
    fused = gs.export_onnx(graph)
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):
        fused.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return fused


def check(path: Path, checkpoint: Path = CHECKPOINT) -> float:
    import onnxruntime as ort

    images = fmnist.load_eval_sample()[0][:256].astype(np.float32)
    with torch.no_grad():
        want = load_vit(checkpoint=checkpoint)(torch.from_numpy(images)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]
    difference = float(np.abs(got - want).max())
    if difference > 1e-4:
        raise RuntimeError(f"{path}: ONNX Runtime vs torch max abs diff {difference:.3e} > 1e-4")
    return difference


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(MODELS_DIR))
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    args = parser.parse_args(argv)
    for form in FORMS:
        path = export(form, Path(args.out) / f"vit_fmnist_{form}.onnx", Path(args.checkpoint))
        print(f"{path.name}: max |ort - torch| = {check(path, Path(args.checkpoint)):.2e}")


if __name__ == "__main__":
    main()
