"""The training stage end to end: `finetune` and `compress --train-data` on the zoo's TinyRes with
Fashion-MNIST train images, checkpoints and resume, Ctrl-C, the loss guard and every refusal."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import onnxfuse  # noqa: E402
from onnxfuse.calibration.data import input_specs, load_npz  # noqa: E402
from onnxfuse.errors import OnnxfuseError  # noqa: E402
from onnxfuse.training import distill  # noqa: E402
from onnxfuse.training.data import ImageLayout, TrainSet, augment, image_layout  # noqa: E402
from onnxfuse.training.options import TrainOptions  # noqa: E402
from tests.helpers import run_cli  # noqa: E402
from tests.test_hygiene import launch  # noqa: E402
from tests.tiny_models import assert_user_error, two_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "models" / "tinyres_fmnist_folded.onnx"
CALIB = ROOT / "models" / "data" / "fmnist_calib512.npz"  # train-split images with labels
QUICK = dict(train_steps=6, batch=16, val_every=3, val_samples=32)


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("student")
    student, _ = onnxfuse.compress(str(TEACHER), 0.5, quiet=True, validate=False)
    onnx.save(student, folder / "student.onnx")
    images = np.load(CALIB)["input"]
    np.savez(folder / "unlabelled.npz", input=images)  # stored uncompressed: memory-mapped
    return folder


def _weights(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: t.raw_data for t in model.graph.initializer}


def _structure(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.initializer[:]
    return copy


# --------------------------------------------------------------------------- training
def test_finetune_trains_the_student_and_keeps_its_graph(student_file):
    student = onnx.load(student_file / "student.onnx")
    model, report = onnxfuse.finetune(str(TEACHER), str(student_file / "student.onnx"),
                                      train_data=str(student_file / "unlabelled.npz"), quiet=True,
                                      **{**QUICK, "train_steps": 30, "val_every": 10, "lr": 0.02})
    assert report["steps"] == 30 and report["metric"] == "agreement"
    assert [v["step"] for v in report["validation"]] == [0, 10, 20, 30]
    first, last = report["loss_curve"][0][1], np.mean([loss for _, loss in report["loss_curve"][-5:]])
    assert last < first
    assert _structure(model).SerializeToString() == _structure(student).SerializeToString()
    if report["best_step"]:
        assert _weights(model) != _weights(student)
        assert report["score_after"] > report["score_before"]
    else:  # nothing beat the start: the untrained student is written
        assert model.SerializeToString() == student.SerializeToString()
    onnx.checker.check_model(model, full_check=True)


def test_labels_add_cross_entropy_and_make_validation_accuracy(student_file):
    _, report = onnxfuse.finetune(str(TEACHER), str(student_file / "student.onnx"), train_data=str(CALIB),
                                  quiet=True, **QUICK)
    assert report["metric"] == "accuracy" and report["teacher_score"] is not None


def test_resume_equals_an_uninterrupted_run(student_file, tmp_path, monkeypatch):
    args = dict(train_data=str(student_file / "unlabelled.npz"), quiet=True, **QUICK, checkpoint_every=2)
    straight, report = onnxfuse.finetune(str(TEACHER), str(student_file / "student.onnx"),
                                         checkpoint=str(tmp_path / "a"), **args)
    original_step = distill.Trainer._step

    def interrupted(self):
        if self.state.step == 3:
            raise KeyboardInterrupt
        original_step(self)

    monkeypatch.setattr(distill.Trainer, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        onnxfuse.finetune(str(TEACHER), str(student_file / "student.onnx"), checkpoint=str(tmp_path / "b"), **args)
    kept = torch.load(tmp_path / "b" / "train.pt", weights_only=True)
    assert kept["state"]["step"] == 3
    monkeypatch.setattr(distill.Trainer, "_step", original_step)
    resumed, report_b = onnxfuse.finetune(str(TEACHER), str(student_file / "student.onnx"),
                                          checkpoint=str(tmp_path / "b"), resume=True, **args)
    a, b = (torch.load(tmp_path / x / "train.pt", weights_only=True) for x in "ab")
    assert a["state"]["losses"] == b["state"]["losses"] and len(a["state"]["losses"]) == 6
    for name, tensor in a["view"].items():
        assert torch.equal(tensor, b["view"][name]), name
    assert straight.SerializeToString() == resumed.SerializeToString()
    assert report["validation"] == report_b["validation"]


def test_a_checkpoint_is_never_continued_by_another_run(student_file, tmp_path):
    args = dict(train_data=str(student_file / "unlabelled.npz"), quiet=True, **QUICK, checkpoint=str(tmp_path / "c"))
    onnxfuse.finetune(str(TEACHER), str(student_file / "student.onnx"), **args)
    with pytest.raises(OnnxfuseError, match="add --resume"):
        onnxfuse.finetune(str(TEACHER), str(student_file / "student.onnx"), **args)
    with pytest.raises(OnnxfuseError, match="checkpoint of another run"):
        onnxfuse.finetune(str(TEACHER), str(student_file / "student.onnx"), **{**args, "lr": 0.5}, resume=True)
    with pytest.raises(OnnxfuseError, match="no checkpoint to resume"):
        onnxfuse.finetune(str(TEACHER), str(student_file / "student.onnx"),
                          **{**args, "checkpoint": str(tmp_path / "none")}, resume=True)


def test_compress_trains_after_the_repair(student_file, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    code, _, err = run_cli(["compress", TEACHER, "-o", out, "--sparsity", "0.5", "--train-data",
                            student_file / "unlabelled.npz", "--train-steps", "4", "--batch", "16", "--val-every", "2",
                            "--val-samples", "32", "--report", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert "train: 4 steps at batch 16" in err
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["train"]["steps"] == 4 and [v["step"] for v in report["train"]["validation"]] == [0, 2, 4]
    assert "## Training" in (tmp_path / "r.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "small.onnx"]  # checkpoint removed


def test_ctrl_c_keeps_the_checkpoint_writes_no_model_and_resume_continues(student_file, tmp_path):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), tmp.mkdir()
    argv = ["finetune", TEACHER, student_file / "student.onnx", "-o", work / "out.onnx", "--train-data",
            student_file / "unlabelled.npz", "--train-steps", "100000", "--batch", "16", "--checkpoint-every", "1",
            "--val-samples", "32", "--val-every", "1000000"]
    proc = launch(argv, work, tmp)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 90
    while not (work / "out.onnx.ckpt" / "train.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint kept" in err and err.strip().splitlines()[-1] == "error: interrupted"
    assert sorted(p.name for p in work.iterdir()) == ["out.onnx.ckpt"]
    step = torch.load(work / "out.onnx.ckpt" / "train.pt", weights_only=True)["state"]["step"]
    assert step >= 1
    resumed = launch([*argv, "--resume"], work, tmp)
    assert resumed.stdout.readline().strip() == "ready"
    line = resumed.stderr.readline()
    while line and not line.startswith("resumed"):
        line = resumed.stderr.readline()
    resumed.send_signal(signal.SIGINT)  # the resumed run is as long: interrupt it too, once it resumed
    _, err = resumed.communicate(timeout=60)
    assert line.startswith(f"resumed at step {step} of 100000"), line + err
    assert resumed.returncode == 130


def test_a_finished_cli_run_writes_the_model_and_removes_its_checkpoint(student_file, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(["finetune", TEACHER, student_file / "student.onnx", "-o", out, "--train-data",
                            student_file / "unlabelled.npz", "--train-steps", "3", "--batch", "16",
                            "--val-samples", "32", "--report", tmp_path / "t.json"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "t.json", "t.md"]
    assert "# onnxfuse finetune report" in (tmp_path / "t.md").read_text()


# --------------------------------------------------------------------------- refusals (exit 2, one line)
def test_a_diverging_loss_stops_with_exit_2_and_no_output(student_file, tmp_path, capsys):
    code, _, err = run_cli(["finetune", TEACHER, student_file / "student.onnx", "-o", tmp_path / "out.onnx",
                            "--train-data", student_file / "unlabelled.npz", "--train-steps", "50", "--batch", "16",
                            "--lr", "1e8", "--clip-grad", "0", "--warmup-steps", "0", "--val-samples", "32"], capsys)
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]  # after the line that said what the run would do
    assert last.startswith("error: the training loss became") and "nothing written" in last
    assert not (tmp_path / "out.onnx").exists()


def test_bad_training_inputs_are_one_line_errors(student_file, tmp_path, capsys):
    onnx.save(two_inputs(), tmp_path / "two.onnx")
    np.savez(tmp_path / "wrong.npz", input=np.zeros((4, 1, 32, 32), np.uint8))
    common = ["-o", tmp_path / "out.onnx", "--train-steps", "2", "--batch", "4"]
    student = student_file / "student.onnx"
    unlabelled = student_file / "unlabelled.npz"
    cases = [
        ([TEACHER, tmp_path / "two.onnx", "--train-data", unlabelled], "different inputs"),
        ([TEACHER, student, "--train-data", tmp_path / "wrong.npz"], "model expects"),
        ([TEACHER, student, "--train-data", tmp_path / "missing.npz"], "no such data file"),
        ([TEACHER, student, "--train-data", unlabelled, "--logits", "nope"], "--logits 'nope'"),
        ([TEACHER, student, "--train-data", unlabelled, "--lr", "-1"], "lr must be"),
        ([TEACHER, student, "--train-data", unlabelled, "--resume"], "no checkpoint to resume"),
    ]
    for argv, match in cases:
        assert_user_error(["finetune", *argv, *common], capsys, tmp_path, match)
    assert_user_error(["compress", TEACHER, "-o", tmp_path / "o.onnx", "--train-data", tmp_path / "wrong.npz"],
                      capsys, tmp_path, "model expects")


def test_an_op_the_view_lacks_is_one_line(tmp_path, capsys):
    from tests.netbuilder import Net

    n = Net(input_shape=("N", 3, 3))
    onnx.save(n.model(n.op("Det", [n.relu("x")])), tmp_path / "det.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((8, 3, 3), np.float32))
    line = assert_user_error(["finetune", tmp_path / "det.onnx", tmp_path / "det.onnx", "-o", tmp_path / "o.onnx",
                              "--train-data", tmp_path / "d.npz", "--batch", "4"], capsys, tmp_path)
    assert "no op Det" in line


def test_missing_torch_is_one_line(student_file, tmp_path, capsys, monkeypatch):
    class NoTorch:  # the import of the training modules fails as it does where torch is not installed
        def find_spec(self, name, path=None, target=None):
            if name == "onnxfuse.training.finetune":
                raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.delitem(sys.modules, "onnxfuse.training.finetune", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoTorch(), *sys.meta_path])
    for command in (["finetune", TEACHER, student_file / "student.onnx"], ["compress", TEACHER]):
        assert_user_error([*command, "-o", tmp_path / "o.onnx", "--train-data", student_file / "unlabelled.npz"],
                          capsys, tmp_path, "pip install 'onnxfuse[train]'")


# --------------------------------------------------------------------------- parts
def test_training_data_is_memory_mapped_and_read_in_seeded_epochs(student_file):
    model = onnx.load(TEACHER)
    mapped = load_npz(student_file / "unlabelled.npz", model, mmap=True)
    assert isinstance(mapped.feeds["input"], np.memmap) and mapped.feeds["input"].dtype == np.uint8
    assert not isinstance(load_npz(CALIB, model, mmap=True).feeds["input"], np.memmap)  # compressed: read
    small = TrainSet(type(mapped)({"input": np.arange(10, dtype=np.uint8)[:, None, None, None]
                                   * np.ones((1, 1, 28, 28), np.uint8)}), input_specs(model), np.arange(10))
    seen = [small.batch(step, 5, seed=3)[0]["input"][:, 0, 0, 0] for step in range(4)]
    assert all(s.dtype == np.float32 for s in seen)
    assert sorted(np.concatenate(seen[:2])) == list(range(10)) and sorted(np.concatenate(seen[2:])) == list(range(10))
    assert np.array_equal(small.batch(2, 5, 3)[0]["input"][:, 0, 0, 0], seen[2])  # a function of (seed, step)
    assert set(seen[0]) != set(seen[2])  # each epoch reshuffled


def test_augmentation_crops_and_flips_image_inputs_only():
    layout = image_layout(input_specs(onnx.load(TEACHER)))
    assert layout == ImageLayout("input", False, 28, 28)
    x = np.zeros((64, 1, 28, 28), np.float32)
    x[:, :, 10:18, 2:6] = 1  # a bar on the left
    out = augment({"input": x}, layout, np.random.default_rng(0))["input"]
    assert out.shape == x.shape and out.dtype == x.dtype
    assert (out.sum(axis=(1, 2, 3)) <= x[0].sum()).all()  # crops move or cut, never add
    left = out[:, 0, :, :14].sum(axis=(1, 2)) > out[:, 0, :, 14:].sum(axis=(1, 2))
    assert 10 < left.sum() < 54  # about half flipped
    assert np.array_equal(out, augment({"input": x}, layout, np.random.default_rng(0))["input"])
    assert image_layout(input_specs(two_inputs())) is None


def test_output_kinds_and_schedule():
    model = onnx.load(TEACHER)
    assert distill.Outputs.detect(model, ()).kinds == ["kl"]
    assert distill.Outputs.detect(model, ("logits",)).kinds == ["kl"]
    options = TrainOptions(train_data="x", train_steps=100, warmup_steps=10)
    lrs = [distill.learning_rate(s, options) for s in range(100)]
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01) and max(lrs) == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-4


def test_kl_loss_is_zero_for_the_teacher_and_positive_otherwise():
    t = torch.randn(8, 10)
    outputs = distill.Outputs(["kl"])
    assert distill.loss_of((t.clone(),), [t], outputs, 4.0, None).item() == pytest.approx(0.0, abs=1e-6)
    assert distill.loss_of((torch.randn(8, 10),), [t], outputs, 4.0, None).item() > 0
    mse = distill.loss_of((2 * t,), [t], distill.Outputs(["mse"]), 4.0, None).item()
    assert mse == pytest.approx(1.0, rel=1e-5)  # normalised by the teacher's mean square



def test_an_image_folder_trains_and_an_external_data_student_stays_external(student_file, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, pixels in enumerate(np.load(CALIB)["input"][:40, 0]):
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    external = tmp_path / "student_ext.onnx"
    onnx.save_model(onnx.load(student_file / "student.onnx"), external, save_as_external_data=True,
                    location="student_ext.onnx.data", size_threshold=0)
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(["finetune", TEACHER, external, "-o", out, "--train-data", folder, "--train-steps", "3",
                            "--batch", "8", "--val-samples", "8"], capsys)
    assert code == 0, err
    assert "on 32 samples" in err  # 40 images, 8 held out
    assert (tmp_path / "out.onnx.data").exists()
    written = onnx.load(out, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in written.graph.initializer)
    onnx.checker.check_model(str(out), full_check=True)
