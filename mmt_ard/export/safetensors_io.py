"""Reading the layout of sharded safetensors checkpoints and rewriting single tensors in place.

A safetensors file is an 8-byte little-endian header length `N`, a JSON header `{name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}`, then the data. When a tensor keeps its dtype and shape, its
bytes can be overwritten in a copy of the file: the header and every other tensor stay byte for byte what they were.
This is how the export touches only the vision tower of a 7B LVLM: the tower's tensors are read, the shard that holds
them is copied, and their byte ranges are rewritten, without loading the language model.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import torch

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

# safetensors dtype names -> torch dtypes
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives.

    Args:
        file: the shard's file name (relative to the checkpoint folder).
        dtype: safetensors dtype name (`BF16`, `F32`, ...).
        shape: the tensor's shape.
        begin: absolute byte offset of its data in the file.
        end: absolute byte offset just past its data.
    """

    file: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in DTYPES:
            raise ValueError(
                f"Tensor dtype {self.dtype!r} is not supported by the export (supported: {list(DTYPES)})."
            )
        return DTYPES[self.dtype]


def read_header(path: str) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the absolute offset where its data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path!r} is not a safetensors file (shorter than 8 bytes).")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n))
    return header, 8 + n


def checkpoint_files(folder: str) -> list[str]:
    """The safetensors shard names of a checkpoint folder (one file, or the shards its index lists)."""
    index_path = os.path.join(folder, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return sorted(set(weight_map.values()))
    if os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
        return [WEIGHTS_NAME]
    legacy = [
        f for f in ("pytorch_model.bin", "pytorch_model.bin.index.json") if os.path.isfile(os.path.join(folder, f))
    ]
    if legacy:
        raise ValueError(
            f"The LVLM folder {folder!r} holds {legacy[0]} (PyTorch pickles): the export rewrites safetensors "
            "checkpoints only. Convert it once with `model.save_pretrained(folder)` (transformers saves safetensors)."
        )
    raise FileNotFoundError(f"The LVLM folder {folder!r} has no {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}.")


def tensor_layout(folder: str) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint folder, with its shard, dtype, shape and byte range (headers only)."""
    layout = {}
    for name in checkpoint_files(folder):
        header, start = read_header(os.path.join(folder, name))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            layout[key] = TensorInfo(name, info["dtype"], tuple(info["shape"]), start + begin, start + end)
    return layout


def read_tensor(folder: str, info: TensorInfo) -> torch.Tensor:
    """One tensor, read from its byte range."""
    with open(os.path.join(folder, info.file), "rb") as f:
        f.seek(info.begin)
        raw = bytearray(f.read(info.end - info.begin))
    flat = torch.frombuffer(raw, dtype=info.torch_dtype) if raw else torch.empty(0, dtype=info.torch_dtype)
    return flat.reshape(info.shape).clone()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The little-endian bytes of a tensor, as safetensors stores them."""
    flat = tensor.detach().contiguous().reshape(-1).cpu()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def overwrite_tensors(path: str, tensors: dict[TensorInfo, torch.Tensor]) -> None:
    """Overwrite the bytes of tensors in a safetensors file; each keeps its dtype and shape."""
    with open(path, "r+b") as f:
        for info, tensor in tensors.items():
            data = tensor_bytes(tensor.to(info.torch_dtype))
            if tuple(tensor.shape) != info.shape or len(data) != info.end - info.begin:
                raise AssertionError(f"tensor at {info} would change size ({tuple(tensor.shape)}, {len(data)} bytes)")
            f.seek(info.begin)
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
