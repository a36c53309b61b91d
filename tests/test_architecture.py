"""The house rules of the layout: no import cycle (lazy imports included), no module over 500 lines,
every pass list's contract consistent, internal errors named by pass, options frozen, the public API
names never shadowed by submodules, seeds reaching every random draw, ONNX Runtime's own warnings
silenced, `onnxfuse --version`."""

import ast
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxfuse
from onnxfuse import pipeline
from onnxfuse.pipeline.contract import PassContractError, PassFailed
from tests.helpers import run_cli
from tests.netbuilder import Net

ROOT = Path(__file__).resolve().parents[1]
TINYRES = ROOT / "models" / "tinyres_fmnist_folded.onnx"
CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"


def _modules() -> dict[str, Path]:
    found = {}
    for base, prefix in ((ROOT / "onnxfuse", "onnxfuse"), (ROOT / "passes", "onnxfuse.passes")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every onnxfuse module `name` imports, anywhere in the file (in-function imports count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        edges |= {t for t in targets if t in modules and t != name}
    return edges


def test_no_import_cycle_in_the_package():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_over_500_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 500}
    assert not long


def test_torch_is_imported_only_in_training():
    """...and not in the training modules that compress loads for its options and data checks."""
    from tests.test_training_view import TORCH_FREE

    for name, path in _modules().items():
        if not name.startswith("onnxfuse.training") or name in TORCH_FREE:
            assert "torch" not in {t.split(".")[0] for t in _third_party(path)}, name


def _third_party(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("options", [pipeline.Options(), pipeline.Options(method="fuse"),
                                     pipeline.Options(method="fuse", calib="c.npz", repair="lsq")])
def test_every_pass_requires_only_what_an_earlier_pass_provides(options):
    available = {"model.source"}
    for p in pipeline.passes(options):
        assert set(p.requires) <= available, f"{p.name} requires {set(p.requires) - available}"
        available |= set(p.provides)


def test_fuse_inserts_its_warm_up_pass_after_load():
    assert [p.name for p in pipeline.passes(pipeline.Options())] == list(pipeline.FLOW)
    names = [p.name for p in pipeline.passes(pipeline.Options(method="fuse"))]
    assert names[:2] == ["load", "warm_up_l1"] and names[2:] == list(pipeline.FLOW[1:])


def test_an_internal_error_names_its_pass(monkeypatch):
    def broken(self, ctx):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(onnxfuse.passes.score.Score, "run", broken)
    with pytest.raises(PassFailed, match=r"internal error in pass score \(after load, normalize, analyze, keep_whole, "
                                         r"capture\): ZeroDivisionError: boom"):
        pipeline.run(pipeline.Context.for_model(pipeline.Options(), str(TINYRES)))


def test_a_user_error_passes_through_unchanged():
    with pytest.raises(onnxfuse.OnnxfuseError, match="no such file"):
        pipeline.run(pipeline.Context.for_model(pipeline.Options(), "missing.onnx"))


def test_the_runner_checks_the_contract_and_the_stop():
    ctx = pipeline.Context.for_model(pipeline.Options(), str(TINYRES))
    with pytest.raises(ValueError, match="unknown pass 'nope'"):
        pipeline.run(ctx, stop_after="nope")
    score = pipeline.PASSES.get("score")()
    with pytest.raises(PassContractError, match="pass score requires model.graph, model.analysis"):
        pipeline.run_passes(ctx, [score])


def test_options_are_frozen_and_probe_plumbing_stays_out_of_the_report():
    options = pipeline.Options()
    with pytest.raises(AttributeError):
        options.sparsity = 0.9
    _, report = onnxfuse.compress(str(TINYRES), 0.5, target_macs=0.5, allocate="sensitivity", calib=str(CALIB),
                                  calib_samples=16, quiet=True, validate=False)
    assert "only_groups" not in report["options"] and "fixed_counts" not in report["options"]
    assert report["allocation"]["chosen"] in ("sensitivity", "uniform", "trade 1", "trade 2")


def test_sweep_and_validate_stay_callable(tmp_path):
    """`onnxfuse.sweep` twice in one process: no submodule of the same name shadows it."""
    for run in range(2):
        result = onnxfuse.sweep(str(TINYRES), tmp_path / f"s{run}", (0.5,), ("prune",), batch=1, runs=1, quiet=True)
        assert [r["method"] for r in result["rows"]] == ["prune"]
    assert callable(onnxfuse.validate) and callable(onnxfuse.inspect) and callable(onnxfuse.compress)


def test_lsq_repair_follows_the_seed():
    def compressed(seed: int) -> bytes:
        model, _ = onnxfuse.compress(str(TINYRES), 0.5, calib=str(CALIB), calib_samples=32, repair="lsq", seed=seed,
                                     quiet=True, validate=False)
        return model.SerializeToString()

    first, second = compressed(0), compressed(1)
    assert first != second
    assert compressed(0) == first and compressed(1) == second


def _shared_unsqueeze_model() -> onnx.ModelProto:
    """Two Unsqueeze nodes of one constant, folded by the normaliser: ONNX Runtime's optimiser warns
    `UnsqueezeElimination cannot remove node` on such graphs when its log level lets it."""
    n = Net(input_shape=("N", 3, 8, 8))
    c = n.const(np.linspace(1, 2, 8).astype(np.float32))
    axes = n.const(np.array([0, 2, 3], np.int64))
    scale = n.op("Add", [n.op("Unsqueeze", [c, axes]), n.op("Unsqueeze", [c, axes])])
    y = n.relu(n.op("Mul", [n.conv("x", 3, 8), scale]))
    return n.model(n.conv(y, 8, 4))


def test_onnx_runtime_warnings_stay_silent_unless_verbose(tmp_path, capfd):
    onnx.save(_shared_unsqueeze_model(), tmp_path / "m.onnx")
    code, _, _ = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx"], _Discard())
    err = capfd.readouterr().err
    assert code == 0 and "wrote" in err
    assert "onnxruntime" not in err and "UnsqueezeElimination" not in err
    try:
        code, _, _ = run_cli(["--verbose", "compress", tmp_path / "m.onnx", "-o", tmp_path / "v.onnx"], _Discard())
        assert code == 0 and "UnsqueezeElimination cannot remove node" in capfd.readouterr().err
    finally:
        onnxfuse.log.verbose(False)


class _Discard:
    """run_cli's capsys stand-in when capfd captures (the C++ log writes to the process's fd 2)."""

    def readouterr(self):
        return "", ""


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        onnxfuse.cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"onnxfuse {onnxfuse.__version__}"
    assert onnxfuse.__version__ == "0.1.0"


def test_no_submodule_shadows_a_public_name():
    public = set(onnxfuse.__all__)
    shadowing = {name for name in public if f"onnxfuse.{name}" in sys.modules}
    assert not shadowing
