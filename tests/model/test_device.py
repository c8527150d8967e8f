import pytest
import torch

from moeforge.errors import ConfigError
from moeforge.model.device import autocast, resolve_device, supports_bf16


def test_auto_is_cpu_without_cuda_and_cuda_with_it():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


def test_cpu_is_cpu_and_a_device_passes_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "tpu:0", ""])
def test_malformed_device_names_the_flag(bad):
    if bad == "":
        assert resolve_device(bad).type in ("cpu", "cuda")  # empty means auto
        return
    with pytest.raises(ConfigError, match="--device"):
        resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0", flag="--device")


def test_cpu_autocast_changes_nothing():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu")):
        y = x @ x
    assert y.dtype == torch.float32 and not supports_bf16(torch.device("cpu"))


@pytest.mark.gpu
def test_cuda_index_out_of_range_is_named():
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
