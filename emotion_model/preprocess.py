"""uint8 RGB frames -> normalized float tensors in the model's layout."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(
    frames: Tensor | np.ndarray,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """uint8 ``[..., T, H, W, 3]`` in 0..255 -> ``dtype`` ``[..., T, 3, H, W]``, normalized.

    Works for one clip ``[T, H, W, 3]`` or a batch ``[B, T, H, W, 3]``, on any device: move
    the uint8 tensor first (4x fewer bytes to copy), then normalize there.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {x.dtype}")
    if x.ndim < 4 or x.shape[-1] != 3:
        raise ValueError(f"expected frames [..., T, H, W, 3], got shape {tuple(x.shape)}")
    x = x.movedim(-1, -3).to(dtype).div_(255.0)  # [..., T, 3, H, W] in 0..1
    shape = (3, 1, 1)
    m = torch.as_tensor(mean, dtype=dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=dtype, device=x.device).view(shape)
    return x.sub_(m).div_(s)


def normalize_array(
    frames: np.ndarray,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """`normalize` in numpy, to the same float32 bits: uint8 ``[..., T, H, W, 3]`` -> C-contiguous
    float32 ``[..., T, 3, H, W]``. For ONNX Runtime's inputs: no torch kernel (and no OpenMP
    thread pool contending with ONNX Runtime's) in its path."""
    if frames.dtype != np.uint8:
        raise TypeError(f"expected uint8 frames, got {frames.dtype}")
    if frames.ndim < 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [..., T, H, W, 3], got shape {tuple(frames.shape)}")
    x = np.ascontiguousarray(np.moveaxis(frames, -1, -3), dtype=np.float32)
    x /= np.float32(255.0)
    x -= np.asarray(mean, np.float32).reshape(3, 1, 1)
    x /= np.asarray(std, np.float32).reshape(3, 1, 1)
    return x
