"""normalize: uint8 [..., T, H, W, 3] -> float [..., T, 3, H, W] with ImageNet mean/std."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emotion_model.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize


@pytest.fixture
def clip() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (8, 6, 5, 3), dtype=np.uint8)


def test_single_clip_layout_dtype_values(clip: np.ndarray) -> None:
    x = normalize(clip)
    assert x.shape == (8, 3, 6, 5)
    assert x.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    want = (torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(x, want)


def test_extremes_map_to_imagenet_bounds() -> None:
    frames = np.zeros((4, 2, 2, 3), np.uint8)
    frames[:, 0, 0] = 255
    x = normalize(frames)
    for c in range(3):
        assert x[0, c, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
        assert x[0, c, 1, 1].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c])


def test_channels_stay_in_rgb_order() -> None:
    frames = np.zeros((4, 2, 2, 3), np.uint8)
    frames[..., 0] = 255  # pure red
    x = normalize(frames, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.equal(x[:, 0], torch.ones(4, 2, 2))
    assert torch.equal(x[:, 1:], torch.zeros(4, 2, 2, 2))


def test_batch(clip: np.ndarray) -> None:
    batch = np.stack([clip, 255 - clip])
    x = normalize(batch)
    assert x.shape == (2, 8, 3, 6, 5)
    torch.testing.assert_close(x[0], normalize(clip))
    torch.testing.assert_close(x[1], normalize(255 - clip))


def test_torch_input_and_non_contiguous_numpy(clip: np.ndarray) -> None:
    torch.testing.assert_close(normalize(torch.from_numpy(clip)), normalize(clip))
    flipped = clip[:, ::-1]  # a negative-stride view
    torch.testing.assert_close(normalize(flipped), normalize(np.ascontiguousarray(flipped)))


def test_input_is_not_modified(clip: np.ndarray) -> None:
    before = clip.copy()
    normalize(clip)
    np.testing.assert_array_equal(clip, before)


def test_custom_mean_std_and_dtype(clip: np.ndarray) -> None:
    x = normalize(clip, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), dtype=torch.float64)
    assert x.dtype == torch.float64
    assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint16])
def test_wrong_dtype(clip: np.ndarray, dtype: type) -> None:
    with pytest.raises(TypeError, match="expected uint8 frames"):
        normalize(clip.astype(dtype))


@pytest.mark.parametrize("shape", [(6, 5, 3), (8, 6, 5, 4), (8, 3, 6, 5), (8, 6, 5, 1)])
def test_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected frames \[\.\.\., T, H, W, 3\]"):
        normalize(np.zeros(shape, np.uint8))


def test_normalize_array_is_normalize_in_numpy(clip: np.ndarray) -> None:
    from emotion_model.preprocess import normalize_array

    batch = np.stack([clip, clip[::-1]])
    got = normalize_array(batch, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == (2, 8, 3, 6, 5)
    want = normalize(batch, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)).numpy()
    assert np.array_equal(got, want)  # the same float32 bits
    with pytest.raises(TypeError, match="expected uint8"):
        normalize_array(batch.astype(np.float32))
    with pytest.raises(ValueError, match="expected frames"):
        normalize_array(batch[..., :2])
