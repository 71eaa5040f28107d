"""execution.device / execution.amp: resolution, validation, CPU training for real, CUDA training where a GPU exists."""

from __future__ import annotations

import warnings

import pytest
import torch

from nasflow.config import DatasetConfig, ExecutionConfig, TrainConfig
from nasflow.data import load_dataset
from nasflow.errors import DeviceError, SpecError
from nasflow.flows.evaluate import train_one
from nasflow.registry import Registry
from nasflow.spec import parse_spec
from nasflow.train import cpu_state_dict, evaluate, to_device, train_model
from nasflow.train_device import amp_dtype, device_problem, resolve_device

from test_train import TinyCNN

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
without_gpu = pytest.mark.skipif(HAS_CUDA, reason="checks what happens on a machine without a CUDA GPU")
ARCH = "stem_c8_s1-ir_k3_e3_c8_s1-ir_k3_e3_c16_s2-head_c32"


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetConfig(subset=600))


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _model(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN()


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_accepted(name):
    assert ExecutionConfig(device=name).device == name


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", ""])
def test_other_device_names_refused(name):
    with pytest.raises(ValueError, match="should match pattern"):
        ExecutionConfig(device=name)


def test_amp_with_an_explicit_cpu_is_refused():
    with pytest.raises(ValueError, match="execution.amp needs a CUDA device"):
        ExecutionConfig(device="cpu", amp=True)
    assert ExecutionConfig(device="auto", amp=True).amp  # portable: float32 where no GPU is found


def test_auto_and_cpu_resolve_here():
    assert device_problem("auto") is None and device_problem("cpu") is None
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")


@without_gpu
def test_cuda_without_a_gpu_is_a_clear_validation_error():
    problem = device_problem("cuda")
    assert problem.startswith("'cuda' needs a CUDA GPU, but ") and "use 'auto' or 'cpu'" in problem
    assert ("no CUDA support" in problem) == (torch.version.cuda is None)
    with pytest.raises(DeviceError, match="execution.device 'cuda:1' needs a CUDA GPU"):
        resolve_device("cuda:1")
    text = "name: x\nexecution:\n  workers: 1\n  device: cuda\n"
    with pytest.raises(SpecError, match=r"<spec>:4: execution.device: 'cuda' needs a CUDA GPU"):
        parse_spec(text)


@without_gpu
def test_amp_on_auto_without_a_gpu_trains_in_float32_and_says_so(digits):
    with pytest.warns(UserWarning, match="execution.amp is on but training runs on the CPU"):
        assert amp_dtype(torch.device("cpu"), True) is None
    plain = train_model(_model(), digits, TrainConfig(epochs=1), device="auto")
    with pytest.warns(UserWarning, match="training in float32"):
        amp = train_model(_model(), digits, TrainConfig(epochs=1), device="auto", amp=True)
    assert amp.val_loss == plain.val_loss and amp.train_loss == plain.train_loss


# ---------------------------------------------------------------- CPU path, for real


def test_training_on_an_explicit_cpu(digits):
    model = _model()
    result = train_model(model, digits, TrainConfig(epochs=2, lr=0.1), device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert result.val_accuracy > 0.5
    again = train_model(_model(), digits, TrainConfig(epochs=2, lr=0.1), device=torch.device("cpu"))
    assert again.val_loss == result.val_loss  # deterministic per seed on the CPU


def test_cpu_batches_are_not_pinned_or_copied():
    import numpy as np

    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = to_device(host, torch.device("cpu"))
    assert not tensor.is_pinned() and tensor.data_ptr() == host.ctypes.data


def test_train_one_records_the_device_and_saves_cpu_weights(tmp_path):
    cfg = DatasetConfig(subset=300)
    ckpt = tmp_path / "m.pt"
    result = train_one(ARCH, cfg, TrainConfig(epochs=1), 1, 1.0, str(ckpt), test=True, device="auto")
    assert result["error"] is None, result
    assert result["train_device"] == str(resolve_device("auto"))
    state = torch.load(ckpt, weights_only=True)  # no map_location: it must load anywhere
    assert all(t.device.type == "cpu" for t in state.values())
    assert 0 <= result["test_accuracy"] <= 1


def test_train_one_reports_an_unusable_device_as_the_candidates_error():
    if HAS_CUDA:
        name = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU
    else:
        name = "cuda"
    result = train_one(ARCH, DatasetConfig(subset=300), TrainConfig(epochs=1), 1, 1.0, device=name)
    assert result["error"].startswith(f"execution.device '{name}'")


def test_registry_records_the_train_device(tmp_path):
    registry = Registry(tmp_path / "r.duckdb")
    registry.start_run("r1", "r", "h", "name: r\n", "thread", "0", train_device="cpu")
    assert registry.get_run("r1")["train_device"] == "cpu"
    registry.start_run("r1", "r", "h", "name: r\n", "thread", "0", train_device="cuda:0")  # a resume elsewhere
    assert registry.get_run("r1")["train_device"] == "cuda:0"


# ---------------------------------------------------------------- CUDA (skip without a GPU)


@needs_gpu
def test_training_on_cuda_keeps_the_model_there_and_matches_cpu_quality(digits):
    model = _model()
    result = train_model(model, digits, TrainConfig(epochs=3, lr=0.1), device="cuda")
    assert all(p.device.type == "cuda" for p in model.parameters())
    cpu = train_model(_model(), digits, TrainConfig(epochs=3, lr=0.1), device="cpu")
    assert result.val_accuracy > 0.8 and abs(result.val_accuracy - cpu.val_accuracy) < 0.1
    assert evaluate(model, digits) == pytest.approx((result.val_accuracy, result.val_loss))
    weights = cpu_state_dict(model)
    assert all(t.device.type == "cpu" for t in weights.values())


@needs_gpu
def test_cuda_batches_go_through_pinned_memory():
    import numpy as np

    tensor = to_device(np.ones((2, 3), dtype=np.float32), torch.device("cuda"))
    assert tensor.device.type == "cuda" and float(tensor.sum()) == 6.0


@needs_gpu
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16-with-scaler"])
def test_amp_on_cuda_trains(digits, monkeypatch, bf16):
    if bf16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    expected = torch.bfloat16 if bf16 else torch.float16
    assert amp_dtype(torch.device("cuda"), True) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent fallback to float32
        result = train_model(_model(), digits, TrainConfig(epochs=3, lr=0.1), device="cuda", amp=True)
    assert result.val_accuracy > 0.7


@needs_gpu
def test_train_one_on_cuda_saves_weights_loadable_on_the_cpu(tmp_path):
    ckpt = tmp_path / "m.pt"
    result = train_one(ARCH, DatasetConfig(subset=300), TrainConfig(epochs=1), 1, 1.0, str(ckpt), device="cuda", amp=True)
    assert result["error"] is None and result["train_device"].startswith("cuda:")
    state = torch.load(ckpt, weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())
