import onnx
import pytest


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A scratch folder (also the current directory) holding the tiny models of test_bad_input."""
    from tests.tiny_models import conv_relu_conv, two_inputs

    monkeypatch.chdir(tmp_path)
    onnx.save(conv_relu_conv(), tmp_path / "model.onnx")
    onnx.save(two_inputs(), tmp_path / "two.onnx")
    return tmp_path
