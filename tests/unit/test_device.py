"""Device selection / fallback logic, NPU environment defaults, fused-attention detection.

The machines have no GPU or Ascend NPU, so these unit tests monkeypatch the device queries to check
the selection logic alone (docs/PLATFORM.md); the npu paths themselves run on the simulated plugin in
test_sim_npu.py, test_npu_*.py and tests/distributed/*npu*.
"""
import paddle
import pytest

from paddle_pangu.parallel import device as dev


@pytest.fixture
def fake_devices(monkeypatch):
    """Simulate a machine: fake_devices(npu=n, cuda=bool, gpus=n)."""

    def install(npu=0, cuda=False, gpus=0):
        monkeypatch.setattr(paddle.device, "get_all_custom_device_type", lambda: ["npu"] if npu else [])
        monkeypatch.setattr(paddle.device, "get_available_custom_device", lambda: [f"npu:{i}" for i in range(npu)])
        monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: cuda)
        monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: gpus)

    return install


def test_real_machine_picks_what_this_build_has():
    """On this build, unpatched: the device paddle itself reports (a CPU host, or a GPU / NPU machine)."""
    has_npu = "npu" in paddle.device.get_all_custom_device_type()
    npus = max(1, sum(d.split(":")[0] == "npu" for d in paddle.device.get_available_custom_device()))
    gpus = paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0
    expected = ("npu", "xccl", npus) if has_npu else ("gpu", "nccl", gpus) if gpus else ("cpu", "gloo", 1)
    info = dev.select_device("auto")
    assert (info.type, info.backend, info.count) == expected
    assert info.paddle_device() == ("cpu" if expected[0] == "cpu" else f"{expected[0]}:0")
    assert dev.select_device("cpu") == dev.DeviceInfo("cpu", "gloo", 1)  # CPU is always there


def test_auto_prefers_npu_then_gpu_then_cpu(fake_devices):
    fake_devices(npu=8, cuda=True, gpus=4)
    assert dev.select_device("auto") == dev.DeviceInfo("npu", "xccl", 8)
    fake_devices(npu=0, cuda=True, gpus=4)
    assert dev.select_device("auto") == dev.DeviceInfo("gpu", "nccl", 4)
    assert dev.select_device("auto").paddle_device(3) == "gpu:3"
    fake_devices(npu=0, cuda=True, gpus=0)  # CUDA build, no visible GPU
    assert dev.select_device().type == "cpu"


def test_explicit_request_honoured_or_fails(fake_devices):
    fake_devices(npu=2, cuda=True, gpus=1)
    assert dev.select_device("gpu").type == "gpu"  # explicit beats the auto preference
    assert dev.select_device("CPU").type == "cpu"
    fake_devices(npu=0, cuda=False)
    with pytest.raises(dev.DeviceError, match="device='npu' requested.*paddle-custom-npu"):
        dev.select_device("npu")
    with pytest.raises(dev.DeviceError, match="no CUDA"):
        dev.select_device("gpu")
    fake_devices(npu=0, cuda=True, gpus=0)
    with pytest.raises(dev.DeviceError, match="no GPU is visible"):
        dev.select_device("gpu")
    with pytest.raises(ValueError, match="expected one of"):
        dev.select_device("tpu")


def test_npu_env_defaults_only_on_npu():
    env = {"FLAGS_use_stride_kernel": "1"}  # user setting wins
    assert dev.npu_env_defaults("cpu", env) == {} and env == {"FLAGS_use_stride_kernel": "1"}
    applied = dev.npu_env_defaults(dev.DeviceInfo("npu", "xccl", 8), env)
    assert "FLAGS_use_stride_kernel" not in applied and env["FLAGS_use_stride_kernel"] == "1"
    assert env["FLAGS_npu_storage_format"] == "1" and env["FLAGS_allocator_strategy"] == "naive_best_fit"
    assert set(applied) == set(dev.NPU_ENV_DEFAULTS) - {"FLAGS_use_stride_kernel"}
    assert dev.npu_env_defaults("npu", env) == {}  # idempotent


def test_fused_attention_detection(monkeypatch, fake_devices):
    assert dev.fused_attention_available("cpu") is None
    from paddle_pangu.parallel import fleet_compat

    assert "matmul" in fleet_compat.registered_kernels()  # the real query answers on this paddle
    monkeypatch.setattr(fleet_compat, "registered_kernels", lambda: {"matmul", "flash_attention_npu"})
    assert dev.fused_attention_available("npu") == "npu"
    monkeypatch.setattr(fleet_compat, "registered_kernels", lambda: {"matmul"})
    assert dev.fused_attention_available("npu") is None  # plugin without the kernel: plain path
    fake_devices(cuda=True, gpus=1)
    assert dev.fused_attention_available(dev.DeviceInfo("gpu", "nccl", 1)) == "sdpa"
    fake_devices(cuda=False)
    assert dev.fused_attention_available("gpu") is None
