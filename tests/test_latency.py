"""Latency features on real ONNX Runtime sessions (CPU here): `bench`, `sweep`, `--device`,
`--round-to auto`, `--target-latency` and the Markdown report. Behaviour only, never timings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxfuse
import onnxfuse.reporting.summary
from onnxfuse import pipeline
from onnxfuse.planning.latency import LatencyProbe
from onnxfuse.runtime.timing import cpu_channel_block
from tests.helpers import run_cli
from tests.tiny_models import assert_user_error, conv_relu_conv, single_conv

ROOT = Path(__file__).resolve().parents[1]
TINYRES = ROOT / "models" / "tinyres_fmnist_folded.onnx"
EVAL = ROOT / "models" / "data" / "fmnist_eval2000.npz"
NO_CUDA = "CUDAExecutionProvider" not in ort.get_available_providers()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "pruned.onnx"
    model, _ = onnxfuse.compress(TINYRES, 0.5, validate=False, quiet=True)
    onnx.save(model, path)
    return path


def test_bench_json(pruned, capsys):
    code, out, err = run_cli(["bench", TINYRES, pruned, "--batch", "1,4", "--runs", "3", "--warmup", "1",
                              "--threads", "1", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["provider"] == "CPUExecutionProvider" and report["threads"] == 1
    assert [b["batch"] for b in report["batches"]] == [1, 4]
    assert 0 < report["macs_after"] < report["macs_before"]
    assert report["ideal_speedup"] == pytest.approx(1 / report["mac_ratio"], rel=1e-3)
    for row in report["batches"]:
        for model in ("original", "compressed"):
            t = row[model]
            assert 0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"] and t["iqr_ms"] >= 0
            assert t["throughput"] == pytest.approx(row["batch"] / t["median_ms"] * 1e3, rel=1e-3)
        assert row["speedup"] == pytest.approx(row["original"]["median_ms"] / row["compressed"]["median_ms"],
                                               rel=1e-2)
    assert "bench: batch 4" in err


def test_bench_text_and_api(pruned, capsys):
    code, out, err = run_cli(["bench", TINYRES, pruned, "--batch", "2", "--runs", "2"], capsys)
    assert code == 0, err
    assert "provider: CPUExecutionProvider" in out and "ideal speed-up" in out
    assert any(line.split()[:1] == ["2"] and line.count("x") >= 2 for line in out.splitlines())
    report = onnxfuse.bench(TINYRES, onnx.load(pruned), batch_sizes=[3], runs=2, warmup=0, device="cpu")
    assert [b["batch"] for b in report["batches"]] == [3]


def test_bench_fixed_batch_model_uses_its_batch(tmp_path):
    model = conv_relu_conv()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    report = onnxfuse.bench(model, model, batch_sizes=(1, 32), runs=2, warmup=0)
    assert [b["batch"] for b in report["batches"]] == [2]
    assert report["mac_ratio"] == 1.0


@pytest.mark.parametrize("argv", [
    ["bench", "missing.onnx", "model.onnx"],
    ["bench", "model.onnx", "model.onnx", "--runs", "0"],
    ["bench", "model.onnx", "model.onnx", "--batch", "1,x"],
    ["bench", "model.onnx", "two.onnx"],  # different inputs
    ["bench", "model.onnx", "model.onnx", "--device", "tpu"],
], ids=["missing", "runs", "batch", "inputs", "device"])
def test_bench_bad_input(work, capsys, argv):
    assert_user_error(argv, capsys, work)


@pytest.mark.skipif(not NO_CUDA, reason="this onnxruntime has the CUDA provider")
@pytest.mark.parametrize("command", [["bench", "model.onnx", "model.onnx"], ["validate", "model.onnx", "model.onnx"],
                                     ["compress", "model.onnx", "-o", "out.onnx"]])
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_gpu_device_without_gpu_provider(work, capsys, command, device):
    line = assert_user_error([*command, "--device", device], capsys, work, match=f"device {device} asked for")
    assert "CPUExecutionProvider" in line  # says what is available


# ---------------------------------------------------------------------------------------------
# round-to per device


def test_round_to_auto_per_device(monkeypatch):
    assert pipeline.Options().round_to == "auto"
    assert pipeline.auto_round_to(pipeline.Options(device="cpu")) == 1
    assert pipeline.auto_round_to(pipeline.Options(device="cpu", target_macs=0.5)) == 8
    assert pipeline.auto_round_to(pipeline.Options(device="cpu", target_latency=0.5)) == cpu_channel_block()
    monkeypatch.setattr(pipeline.options, "resolved_device", lambda device: "cuda")
    assert pipeline.auto_round_to(pipeline.Options()) == 8
    _, report = onnxfuse.compress(single_conv(), 0.5, validate=False, quiet=True, device="cuda")
    assert report["options"]["round_to"] == 8


def test_round_to_auto_on_cpu_keeps_every_width(tmp_path, capsys):
    report = tmp_path / "r.json"
    code, _, err = run_cli(["compress", TINYRES, "-o", tmp_path / "o.onnx", "--round-to", "auto", "--device", "cpu",
                            "--sparsity", "0.3", "--no-validate", "--report", report], capsys)
    assert code == 0, err
    r = json.loads(report.read_text())
    assert r["options"]["round_to"] == 1
    assert all(g["kept"] == int(g["width"] * 0.7) for g in r["groups"] if g["prunable"])


# ---------------------------------------------------------------------------------------------
# latency target and the Markdown report


def _weight_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def test_target_latency_reports_target_and_reached(tmp_path, capsys, monkeypatch):
    """Timings on a shared machine are noise, so the probe's clock is replaced by a deterministic
    stand-in (latency ∝ weight count); planning, allocation and the report are the real ones."""
    original = _weight_count(onnx.load(TINYRES))
    monkeypatch.setattr(LatencyProbe, "ratio", lambda self, model, runs=0: _weight_count(model) / original)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code, _, err = run_cli(["compress", TINYRES, "-o", out, "--target-latency", "0.6", "--latency-batch", "8",
                            "--round-to", "1", "--data", EVAL, "--report", report], capsys)
    assert code == 0, err
    r = json.loads(report.read_text())
    lat = r["latency"]
    assert lat["target"] == 0.6 and lat["batch"] == 8 and lat["provider"] == "CPUExecutionProvider"
    assert lat["met"] == (lat["reached"] <= 0.6) and lat["reached"] > 0
    assert ("(met)" if lat["met"] else "(MISSED)") in err
    assert r["latency_plan"]["estimated"] <= r["latency_plan"]["goal"]
    assert set(r["latency_plan"]["savings"]) == {str(g["id"]) for g in r["groups"] if g["prunable"]}
    assert r["macs_after"] < r["macs_before"]
    md = report.with_suffix(".md").read_text()
    assert "## Latency" in md and ("met" in md or "missed" in md)


@pytest.mark.parametrize("options", [["--target-latency", "0"], ["--target-latency", "1.5"],
                                     ["--target-latency", "0.5", "--target-macs", "0.5"],
                                     ["--latency-batch", "0"]])
def test_target_latency_bad_options(work, capsys, options):
    assert_user_error(["compress", "model.onnx", "-o", "out.onnx", *options], capsys, work)


def test_markdown_report(tmp_path, capsys):
    report = tmp_path / "summary.md"
    code, _, err = run_cli(["compress", TINYRES, "-o", tmp_path / "o.onnx", "--sparsity", "0.5", "--data", EVAL,
                            "--report", report], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "summary.json").read_text())
    md = report.read_text()
    assert md.startswith("# onnxfuse compress report")
    assert f"| params | {r['params_before']:,} | {r['params_after']:,} |" in md
    assert f"| MACs | {r['macs_before']:,} | {r['macs_after']:,} |" in md
    assert "## Validation (CPUExecutionProvider, 2000 samples" in md
    for g in r["groups"]:
        if g["prunable"]:
            assert f"| {g['id']} | {g['kept']} / {g['width']} | prune |" in md
    assert "## Time per pass" in md and "| load | normalize |" in md


# ---------------------------------------------------------------------------------------------
# sweep


def _sweep(tmp_path, capsys, *extra):
    out = tmp_path / "sweep"
    code, _, err = run_cli(["sweep", TINYRES, "-o", out, "--sparsities", "0.3,0.5", "--methods", "prune",
                            "--data", EVAL, "--runs", "2", "--batch", "4", "--threads", "1", *extra], capsys)
    assert code == 0, err
    return out, err


def test_sweep_writes_table_json_and_plot(tmp_path, capsys):
    out, err = _sweep(tmp_path, capsys)
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json", "sweep.md", "sweep.png"]
    result = json.loads((out / "sweep.json").read_text())
    rows = result["rows"]
    assert [(r["method"], r["sparsity"]) for r in rows] == [("prune", 0.3), ("prune", 0.5)]
    assert 0 < rows[1]["mac_ratio"] < rows[0]["mac_ratio"] < 1
    assert all(0 <= r["accuracy"] <= 1 and r["latency_ms"] > 0 for r in rows)
    table = (out / "sweep.md").read_text().splitlines()
    assert sum(line.startswith("| prune |") for line in table) == 2
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "sweep 2/2: prune at sparsity 0.5: timing" in err


def test_sweep_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as when it is not installed
    out, err = _sweep(tmp_path, capsys, "--sparsities", "0.5")
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json", "sweep.md"]
    assert "matplotlib is not installed" in err


@pytest.mark.parametrize("options", [["--sparsities", "0.3,1.2"], ["--methods", "prune,magic"],
                                     ["--batch", "1,32"], ["--calib", "missing.npz"]])
def test_sweep_bad_input(work, capsys, options):
    assert_user_error(["sweep", "model.onnx", "-o", "out", *options], capsys, work)


def test_latency_model_with_efficiency_one_is_the_mac_model():
    """When every group's timings saved exactly its MAC share, the latency model is the MAC model,
    compounding included (both sides of a conv shrunk)."""
    import numpy as np

    from onnxfuse.planning.counts import estimated_mac_ratio, keep_count
    from onnxfuse.planning.latency import LATENCY_LEVELS, LatencyModel
    from onnxfuse.planning.sensitivity import LEVELS, importance_damage

    ctx = pipeline.run(pipeline.Context.for_model(pipeline.Options(round_to=1), str(TINYRES)), stop_after="score")
    analysis, groups = ctx.model.analysis, ctx.model.analysis.prunable
    savings = {g.id: np.array([1 - estimated_mac_ratio(analysis, {g.id: keep_count(g.width, s)})
                               for s in LATENCY_LEVELS]) for g in groups}
    model = LatencyModel(analysis, savings)
    for s in (0.0, 0.3, 0.6):
        counts = {g.id: keep_count(g.width, s) for g in groups}
        assert model.ratio(counts) == pytest.approx(estimated_mac_ratio(analysis, counts), abs=1e-9)
    halved = LatencyModel(analysis, {g: v / 2 for g, v in savings.items()})
    counts = {g.id: keep_count(g.width, 0.5) for g in groups}
    assert 1 - halved.ratio(counts) == pytest.approx((1 - estimated_mac_ratio(analysis, counts)) / 2)
    damage = importance_damage(groups, ctx.decisions.scores, LEVELS)
    for g in groups:
        values = [damage[g.id][s] for s in (0.0, *LEVELS)]
        assert values[0] == 0 and values == sorted(values) and values[-1] < 1


@pytest.mark.parametrize("round_to, hinted", [(1, True), (16, False)])
def test_summary_hints_at_the_cpu_channel_block(monkeypatch, round_to, hinted):
    monkeypatch.setattr(onnxfuse.reporting.summary, "cpu_channel_block", lambda: 16)  # the block differs between CPUs
    model = str(Path(__file__).parents[1] / "models" / "resnet18_fmnist_folded.onnx")
    _, report = onnxfuse.compress(model, 0.5, round_to=round_to, validate=False, quiet=True)
    assert ("hint: " in onnxfuse.reporting.summary.summary(report)) == hinted
    assert all(g["kept"] % 16 == 0 for g in report["groups"] if "kept" in g) != hinted
