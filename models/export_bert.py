"""A tiny BERT classifier from Hugging Face transformers (random weights: a structure test, not a
trained model), exported by torch's TorchScript exporter and fused by ONNX Runtime's transformer
optimizer into its com.microsoft ops, as users who deploy BERT with ONNX Runtime get it:

    bert_tiny_attention.onnx   EmbedLayerNormalization, Attention (packed QKV weight), SkipLayerNorm, BiasGelu
    bert_tiny_mha.onnx         the same with MultiHeadAttention (Q, K, V projected by MatMuls)

Each is checked against torch on random token ids (<= 1e-4). Needs `pip install transformers`
(not a dependency of onnxfuse: the files are committed).

    python -m models.export_bert [--out DIR]      (default: models/)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

MODELS_DIR = Path(__file__).resolve().parent
VOCAB, HIDDEN, HEADS, LAYERS, FFN, MAX_LEN = 1000, 32, 4, 2, 64, 64


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=FFN, max_position_embeddings=MAX_LEN, num_labels=3,
                        attn_implementation="eager")
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # trained-looking scales: the initialiser's 0.02 and zero biases make heads alike
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export(out: Path) -> list[Path]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = Logits(tiny_bert())
    ids, mask = torch.randint(0, VOCAB, (2, 16)), torch.ones(2, 16, dtype=torch.int64)
    dynamic = {0: "batch", 1: "sequence"}
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "bert.onnx"
        torch.onnx.export(model, (ids, mask), str(raw), opset_version=17, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamo=False,
                          dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "logits": {0: "batch"}})
        for name, multi_head in (("attention", False), ("mha", True)):
            options = FusionOptions("bert")
            options.use_multi_head_attention = multi_head
            path = out / f"bert_tiny_{name}.onnx"
            optimize_model(str(raw), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN, opt_level=0,
                           use_gpu=False, optimization_options=options).save_model_to_file(str(path))
            check(path, Logits(tiny_bert()))  # a fresh copy: the traced one answers differently afterwards
            written.append(path)
    return written


def check(path: Path, model) -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, (3, 20))
    mask = np.ones((3, 20), dtype=np.int64)
    mask[1, 15:] = 0
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    error = float(np.abs(got - want).max())
    if error > 1e-4:
        raise SystemExit(f"{path.name}: differs from torch by {error:.2e}")
    print(f"{path.name}: matches torch ({error:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=MODELS_DIR)
    export(parser.parse_args().out)


if __name__ == "__main__":
    main()
