"""A safetensors file written one tensor at a time. Our own writer because safetensors' take every tensor at once
(80 GB of fp32 for GPT-NeoX-20B in one process); the format — an 8-byte header length, a JSON header of each
tensor's dtype, shape and byte offsets, then the bytes in that order — lets a writer that knows the shapes up front
stream the bytes, so exporting a model holds one tensor in memory, not the model."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors(
    path: str | Path,
    specs: list[tuple[str, tuple[int, ...]]],
    dtype: torch.dtype,
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `tensors`, which must come as `specs` lists them (name, shape), converted to `dtype`."""
    element = torch.empty((), dtype=dtype).element_size()
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape in specs:
        size = math.prod(shape) * element
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    expected = iter(specs)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for name, tensor in tensors:
            want = next(expected, None)
            if want is None or (name, tuple(tensor.shape)) != (want[0], tuple(want[1])):
                raise ValueError(f"tensor {name} {tuple(tensor.shape)} arrived where {want} was expected")
            out.write(tensor.detach().to("cpu", dtype).contiguous().reshape(-1).view(torch.uint8).numpy().data)
        missing = [name for name, _ in expected]
        if missing:
            raise ValueError(f"{len(missing)} tensors never arrived, from {missing[0]}")
