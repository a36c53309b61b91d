"""Nothing written outside the outputs (issue 20): ONNX Runtime's symbolic shape inference kept out of
the working directory, read-only places, TMPDIR elsewhere, Ctrl-C at several points, concurrent
writers of one output path."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import pytest
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

import onnxfuse
from benchmarks.soak import incomplete_inference_model
from onnxfuse import cli, scratch
from onnxfuse.errors import OnnxfuseError
from onnxfuse.graph import io as graphio

ROOT = Path(__file__).resolve().parents[1]
TINYRES = ROOT / "models" / "tinyres_fmnist_folded.onnx"
CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"
# cli.main in a fresh process; "ready" once start-up is done and main's error handling has begun (as
# the run's scope opens): a signal in the instant before main's `try` would be Python's, not ours
LAUNCH = ("import sys, onnxfuse.cli as c, onnxfuse.scratch as s\n"
          "scope = s.run\n"
          "def announced():\n"
          "    s.run = scope\n"
          "    print('ready', flush=True)\n"
          "    return scope()\n"
          "s.run = announced\n"
          "sys.exit(c.main(sys.argv[1:]))")


def tree(folder: Path) -> dict[str, bytes]:
    """Every entry under `folder` with its content (b"" for folders)."""
    return {str(p.relative_to(folder)): b"" if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.fixture
def places(tmp_path):
    """An empty working directory, an empty TMPDIR, a read-only input file in a read-only folder,
    an output folder."""
    work, tmp, inputs, out = (tmp_path / name for name in ("work", "tmp", "inputs", "out"))
    for folder in (work, tmp, inputs, out):
        folder.mkdir()
    model = inputs / "incomplete.onnx"
    onnx.save(incomplete_inference_model(), model)
    model.chmod(0o444)
    inputs.chmod(0o555)
    yield {"work": work, "tmp": tmp, "inputs": inputs, "out": out, "model": model}
    inputs.chmod(0o755)


def launch(argv, cwd, tmp, **kw) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmp))
    # a shell that started us in the background ignores SIGINT, and children inherit that: restore Ctrl-C
    return subprocess.Popen([sys.executable, "-c", LAUNCH, *map(str, argv)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def run(argv, cwd, tmp) -> tuple[int, str, str]:
    proc = launch(argv, cwd, tmp)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def unwritable_folder() -> Path:
    """A folder where creating a file really fails, even as root (permissions do not stop root)."""
    for candidate in ("/sys", "/proc"):
        try:
            fd, name = tempfile.mkstemp(dir=candidate)
        except OSError:
            return Path(candidate)
        os.close(fd)
        os.unlink(name)
    pytest.skip("no folder here refuses new files")


def test_the_model_makes_symbolic_inference_write_into_the_working_directory(tmp_path, monkeypatch):
    """What the other tests guard against, straight from ONNX Runtime (if this fails, the model
    no longer triggers it and the tests below prove nothing)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):
        SymbolicShapeInference.infer_shapes(incomplete_inference_model(), auto_merge=True)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "sym_shape_infer_temp.onnx" in left and any(name.endswith(".data") for name in left)


def test_symbolic_inference_runs_in_the_private_folder_under_tmpdir(tmp_path, monkeypatch):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), tmp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    seen, real = [], SymbolicShapeInference.infer_shapes

    def spy(*args, **kwargs):
        seen.append(Path.cwd())
        return real(*args, **kwargs)

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(spy))
    report = onnxfuse.inspect(incomplete_inference_model())
    assert report["groups"] and seen and all(tmp in cwd.parents for cwd in seen)
    assert Path.cwd() == work and not any(work.iterdir()) and not any(tmp.iterdir())

    def interrupted(*args, **kwargs):
        with contextlib.suppress(Exception):  # it stops short on this model, having written its files
            spy(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(interrupted))
    with pytest.raises(KeyboardInterrupt):
        onnxfuse.inspect(incomplete_inference_model())
    assert Path.cwd() == work and not any(work.iterdir()) and not any(tmp.iterdir())


def test_the_private_folder_goes_on_error():
    with pytest.raises(OnnxfuseError), scratch.run():
        folder = scratch.directory()
        (folder / "capture.npy").write_bytes(b"x" * 100)
        raise OnnxfuseError("refused")
    assert not folder.exists()


def test_inspect_and_compress_leave_the_working_directory_and_tmpdir_empty(places):
    work, tmp, out, model = places["work"], places["tmp"], places["out"], places["model"]
    inputs = tree(places["inputs"])
    rc, text, err = run(["inspect", model], work, tmp)
    assert rc == 0 and "groups" in text, err
    rc, _, err = run(["compress", model, "-o", out / "small.onnx", "--report", out / "r.json"], work, tmp)
    assert rc == 0, err
    onnx.checker.check_model(str(out / "small.onnx"), full_check=True)
    assert sorted(tree(out)) == ["r.json", "r.md", "small.onnx"]
    assert tree(work) == {} and tree(tmp) == {} and tree(places["inputs"]) == inputs


def test_a_working_directory_that_cannot_be_written(places):
    """The working directory refuses new files (a pseudo file system: root included)."""
    cwd, tmp, out, model = unwritable_folder(), places["tmp"], places["out"], places["model"]
    rc, _, err = run(["compress", model, "-o", out / "small.onnx"], cwd, tmp)
    assert rc == 0, err
    onnx.checker.check_model(str(out / "small.onnx"))
    assert tree(tmp) == {}


def test_an_output_folder_that_cannot_be_written_fails_before_any_work(places, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("compress started")

    monkeypatch.setattr(onnxfuse.api, "compress", no_work)
    folder = unwritable_folder()
    assert cli.main(["compress", str(places["model"]), "-o", str(folder / "small.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {folder}: output directory is not writable"), err


@pytest.mark.parametrize("delay", [0.0, 1.0, 2.5])
def test_ctrl_c_leaves_nothing_and_exits_130(tmp_path, delay):
    """SIGINT `delay` seconds after start-up, into compress with calibration (load, capture, the
    sensitivity probes, OT, lsq repair, validation: it runs well over 2.5 s even on a fast machine)."""
    work, tmp, out = tmp_path / "work", tmp_path / "tmp", tmp_path / "out"
    for folder in (work, tmp, out):
        folder.mkdir()
    (out / "small.onnx").write_bytes(b"an earlier result")
    (tmp / "someone-else's").write_text("kept")
    before = {folder: tree(folder) for folder in (work, tmp, out)}
    proc = launch(["compress", TINYRES, "-o", out / "small.onnx", "--report", out / "r.json", "--calib", CALIB,
                   "--method", "fuse", "--repair", "lsq", "--target-macs", "0.25", "--allocate", "sensitivity"],
                  work, tmp)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["error: interrupted"]
    assert {folder: tree(folder) for folder in (work, tmp, out)} == before


def test_two_runs_racing_for_one_output_leave_one_whole_result(tmp_path):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), tmp.mkdir()
    model = tmp_path / "incomplete.onnx"
    onnx.save(incomplete_inference_model(), model)
    racers = [launch(["compress", model, "-o", "same.onnx", "--sparsity", s], work, tmp) for s in ("0.25", "0.75")]
    for proc in racers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    expected = [onnxfuse.compress(str(model), s, quiet=True)[0].SerializeToString() for s in (0.25, 0.75)]
    assert expected[0] != expected[1]
    assert sorted(tree(work)) == ["same.onnx"] and tree(tmp) == {}
    onnx.checker.check_model(str(work / "same.onnx"), full_check=True)
    assert (work / "same.onnx").read_bytes() in expected


WRITER = """
import sys, onnx
from onnxfuse.graph.io import save_model
print('ready', flush=True)
sys.stdin.readline()  # all start together
for _ in range(int(sys.argv[3])):  # loaded each time: saving moves the weights out of the proto
    save_model(onnx.load(sys.argv[1]), sys.argv[2], input_path=sys.argv[4])
"""


def test_concurrent_writers_of_a_model_with_external_data_never_mix(tmp_path):
    """The model and its .data file are two renames: two writers looping on one path must leave
    a matching pair (one writer's both); a third writes another output in the same folder."""
    source = tmp_path / "external.onnx"  # an input with external data: the outputs get some too
    onnx.save_model(incomplete_inference_model(), str(source), save_as_external_data=True, location="external.data")
    variants = []
    for seed in (1, 2):
        path = tmp_path / f"variant{seed}.onnx"
        onnx.save(incomplete_inference_model(seed), path)
        variants.append(path)
    out = tmp_path / "out"
    out.mkdir()
    targets = [out / "same.onnx", out / "same.onnx", out / "other.onnx"]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, variant, target, "20", source], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for variant, target in zip(variants + variants[:1], targets)]
    for proc in writers:
        assert proc.stdout.readline().strip() == "ready", proc.communicate()[1]
    for proc in writers:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in writers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert sorted(tree(out)) == ["other.onnx", "other.onnx.data", "same.onnx", "same.onnx.data"]
    written = onnx.load(str(out / "same.onnx"))
    onnx.checker.check_model(written)
    weights = {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in written.graph.initializer}
    assert weights in [{t.name: onnx.numpy_helper.to_array(t).tobytes() for t in onnx.load(str(v)).graph.initializer}
                       for v in variants]


def test_an_interrupt_between_the_renames_leaves_no_output(tmp_path, monkeypatch):
    """Ctrl-C after the .data file is in place but before the model: the run removes it again."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a pytest started in the background ignores SIGINT
    source = tmp_path / "external.onnx"
    onnx.save_model(incomplete_inference_model(), str(source), save_as_external_data=True, location="external.data")
    out, real = tmp_path / "out", os.replace
    out.mkdir()
    renames = []

    def replace(src, dst):
        renames.append(dst)
        real(src, dst)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # held until both renames are done

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), scratch.run():
        graphio.save_model(onnx.load(str(source)), out / "m.onnx", input_path=source)
    assert len(renames) == 2 and tree(out) == {}


def test_a_read_only_output_file_in_a_writable_folder_is_replaced(tmp_path):
    """A write-protected earlier result (the folder is writable): replaced atomically, as `mv` would."""
    old = tmp_path / "m.onnx"
    old.write_bytes(b"old")
    old.chmod(stat.S_IRUSR)
    graphio.save_model(incomplete_inference_model(), old)
    onnx.checker.check_model(str(old))
