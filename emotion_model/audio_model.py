"""The audio branch's encoder: a small 2D CNN over a clip's log-mel spectrogram.

::

    log-mel float32 [B, n_mels, frames]  (or [B, 1, n_mels, frames])
        -> BatchNorm1d over the mel bands (the input normalization, learned: PANNs' ``bn0``)
        -> 4 x [Conv2d 3x3 (no bias) -> BatchNorm2d -> ReLU -> MaxPool2d 2x2],
           channels 16 -> 32 -> 64 -> 128   ([B, 128, n_mels / 16, frames / 16])
        -> mean over frequency and time -> embedding float32 [B, 128]

With ``AudioSpec()`` (64 mel bands x 400 frames, 4 s) it has 97.5k parameters and takes
0.18 GFLOPs per clip (``FlopCounterMode``: 2 per multiply-add): 1/16 of the small SlowFast's
2.9 GFLOPs, 1/215 of R50's 39.6 (48 frames at 112 px). The normalization lives in the model
(its running statistics travel in the deployment file and in every export), so callers pass
the log-mel as ``AudioSpec`` makes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

AUDIO_CHANNELS: tuple[int, ...] = (16, 32, 64, 128)
"""Output channels of the four conv blocks; the last is the embedding's size."""
AUDIO_EMBED_DIM = AUDIO_CHANNELS[-1]
"""Size of the audio embedding (and of the learned no-audio embedding)."""
AUDIO_MIN_SIZE = 2 ** len(AUDIO_CHANNELS)
"""Smallest number of mel bands and of frames the four 2x2 poolings accept."""


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (same padding, no bias: the batch norm has one) -> BN -> ReLU -> 2x2 max pool."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class AudioEncoder(nn.Module):
    """log-mel ``[B, n_mels, frames]`` -> embedding ``[B, channels[-1]]`` (see the module doc).

    Any number of frames >= 16 works (the pooling at the end is global); ``n_mels`` is fixed
    by the input normalization.
    """

    def __init__(self, n_mels: int = 64, channels: Sequence[int] = AUDIO_CHANNELS) -> None:
        super().__init__()
        if n_mels < AUDIO_MIN_SIZE:
            raise ValueError(f"the audio encoder needs n_mels >= {AUDIO_MIN_SIZE}, got {n_mels}")
        self.n_mels = n_mels
        self.input_norm = nn.BatchNorm1d(n_mels)
        widths = [1, *channels]
        self.blocks = nn.Sequential(
            *(_conv_block(cin, cout) for cin, cout in zip(widths, widths[1:], strict=False))
        )
        self.embed_dim = widths[-1]

    def forward(self, audio: Tensor) -> Tensor:
        """float32 ``[B, n_mels, frames]`` or ``[B, 1, n_mels, frames]`` -> ``[B, embed_dim]``."""
        if audio.ndim == 4 and audio.shape[1] == 1:
            audio = audio.squeeze(1)
        if audio.ndim != 3 or audio.shape[1] != self.n_mels:
            raise ValueError(
                f"expected audio [B, {self.n_mels}, frames] (or [B, 1, {self.n_mels}, frames]), "
                f"got shape {tuple(audio.shape)}"
            )
        if audio.shape[2] < AUDIO_MIN_SIZE:
            raise ValueError(f"audio needs >= {AUDIO_MIN_SIZE} frames, got {audio.shape[2]}")
        x = self.input_norm(audio).unsqueeze(1)  # [B, 1, n_mels, frames]
        return self.blocks(x).mean(dim=(2, 3))
