"""Reading tensors from a file without running any code in it: safetensors, or a torch file
loaded with ``weights_only=True``. The lowest layer of model loading: ``model.py`` reads
Kinetics backbone weights through it and ``checkpoint.py`` deployment files and checkpoints."""

from __future__ import annotations

import json
import pickle
import struct
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from torch import Tensor

from emotion_model.errors import CheckpointError, TruncatedCheckpointError, UnsafeCheckpointError
from emotion_model.files import Source, bytes_io, read_source_bytes

METADATA_KEY = "emotion_pipeline"
"""The safetensors ``__metadata__`` key that holds a deployment file's JSON record."""


def torch_load_weights_only(name: str, data: bytes) -> Any:
    """``torch.load(..., weights_only=True)`` of ``data``; a pickle that needs arbitrary code is
    refused (`UnsafeCheckpointError`), damaged bytes are a `TruncatedCheckpointError`."""
    try:
        return torch.load(bytes_io(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpointError(
            name, f"refused: the file needs arbitrary unpickling to load ({first[:160]})"
        ) from exc
    except (RuntimeError, EOFError, ValueError, struct.error) as exc:
        raise TruncatedCheckpointError(name, f"unreadable torch file ({exc})") from exc


def is_torch_file(data: bytes) -> bool:
    """True for a torch file (zip or legacy pickle), False for safetensors."""
    if data[:4] == b"PK\x03\x04":
        return True
    # A pickle starts with 0x80 (PROTO), but so does a safetensors file whose header length is
    # 128 mod 256; its JSON header starts at byte 8.
    return data[:1] == b"\x80" and data[8:9] != b"{"


def read_state_dict(source: Source) -> dict[str, Tensor]:
    """Read a state dict from safetensors or a torch file (``weights_only=True``).

    Unwraps the common containers: ``model_state`` (pytorchvideo), ``state_dict``, ``model``.
    """
    name, data = read_source_bytes(source)
    if not data:
        raise TruncatedCheckpointError(name, "empty file (0 bytes)")
    if is_torch_file(data):
        obj = torch_load_weights_only(name, data)
        for key in ("model_state", "state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise CheckpointError(name, "the torch file holds no state dict of tensors")
        return dict(obj)
    return load_safetensors(name, data)[0]


def load_safetensors(name: str, data: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors of a safetensors file and the metadata record stored under `METADATA_KEY`."""
    if len(data) < 8:
        raise TruncatedCheckpointError(name, f"truncated: {len(data)} bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise TruncatedCheckpointError(
            name, f"truncated: header says {header_len} bytes, file has {len(data) - 8}"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TruncatedCheckpointError(name, "not a model file (no safetensors header)") from exc
    try:
        state = st_load(data)
    except SafetensorError as exc:
        raise TruncatedCheckpointError(name, f"truncated or damaged weights ({exc})") from exc
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    metadata = json.loads(raw) if raw else {}
    return state, metadata
