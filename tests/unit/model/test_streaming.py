"""The streaming safetensors writer: what it writes is what safetensors reads, and tensors out of order or missing
are an error, not a silently wrong file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from neox.model.streaming import write_safetensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_tensors_read_back_as_written(tmp_path, dtype):
    tensors = {"a.weight": torch.randn(3, 5), "b.bias": torch.randn(7), "c.weight": torch.randn(2, 3, 4)}
    specs = [(name, tuple(t.shape)) for name, t in tensors.items()]
    write_safetensors(tmp_path / "m.safetensors", specs, dtype, iter(tensors.items()), metadata={"format": "pt"})
    back = load_file(tmp_path / "m.safetensors")
    assert list(back) == list(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == dtype and torch.equal(back[name], tensor.to(dtype))


def test_a_tensor_out_of_order_or_missing_is_refused(tmp_path):
    specs = [("a", (2,)), ("b", (3,))]
    with pytest.raises(ValueError, match=r"tensor b \(3,\) arrived where \('a', \(2,\)\) was expected"):
        write_safetensors(tmp_path / "x.safetensors", specs, torch.float32, [("b", torch.zeros(3))])
    with pytest.raises(ValueError, match="1 tensors never arrived, from b"):
        write_safetensors(tmp_path / "y.safetensors", specs, torch.float32, [("a", torch.zeros(2))])
