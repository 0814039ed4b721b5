"""EmotionClassifier: the pytorchvideo SlowFast-R50 backbone with Squeeze-and-Excitation blocks
and a small classification head, as the model card describes it.

::

    frames float32 [B, T, C, H, W] (ImageNet-normalized)
        -> permute to pytorchvideo's [B, C, T, H, W]
        -> fast pathway: all T frames; slow pathway: T / alpha frames (alpha = 4)
        -> SlowFast-R50 stem + 4 residual stages (SE inside every bottleneck), lateral fusion
        -> adaptive average pool per pathway, concatenated  [B, 8 * width * 4 + ...] (2304 for R50)
        -> Linear(hidden_size) -> ReLU -> Dropout -> Linear(num_classes)
        -> logits [B, num_classes]

The backbone keeps pytorchvideo's module names (``backbone.blocks.0`` ... ``backbone.blocks.5``),
so Kinetics-400 ``SLOWFAST_8x8_R50`` weights map onto it; only the head is new.

``modality`` picks the inputs: ``"video"`` (the above, the default: the model card's model,
no audio parameters), ``"audio"`` (``emotion_model.audio_model.AudioEncoder`` over the clip's
log-mel, no backbone) or ``"audio-video"`` (the pooled SlowFast features and the audio
embedding concatenated before the same head). An audio model also learns a "no audio"
embedding that stands in for clips without sound, and, in training, for a random share of
clips with sound (modality dropout), so it still predicts when a file has no audio track.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

with warnings.catch_warnings():  # fvcore / pytorchvideo import torch.jit.script at import time
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn.squeeze_excitation import SqueezeExcitation
    from pytorchvideo.models.resnet import create_bottleneck_block
    from pytorchvideo.models.slowfast import create_slowfast
    from pytorchvideo.models.x3d import create_x3d

from emotion_model.audio import AudioSpec
from emotion_model.audio_model import AUDIO_MIN_SIZE, AudioEncoder
from emotion_model.errors import ArchitectureMismatchError, CheckpointError
from emotion_model.files import source_name
from emotion_model.labels import EMOTION_LABELS
from emotion_model.weights import read_state_dict

SLOWFAST_ALPHA = 4
"""Frame-rate ratio between the fast and the slow pathway."""

R50_WIDTH = 64
"""Channels of the slow pathway's stem in SlowFast-R50; every stage scales with it."""

Backbone = Literal["slowfast", "x3d-xs"]
BACKBONES: tuple[str, ...] = get_args(Backbone)
X3D_FRAMES = 4
"""Frames of each clip the X3D-XS student reads (X3D-XS's own clip length), evenly spaced."""

PRESETS: dict[str, dict[str, Any]] = {
    "r50": {"width": R50_WIDTH},
    # Same code path, a quarter of the channels: 1/13.5 of the FLOPs, 1/15 of the parameters.
    "small": {"width": 16},
    # The distillation student: X3D-XS over 4 of the clip's frames (bench/distill.py: int8
    # ONNX 24x R50's clips/s on a 2-core CPU; the width-8 SlowFast only 6x, see README).
    "student": {"backbone": "x3d-xs", "sampled_frames": X3D_FRAMES},
}
"""Named architecture variants; ``EmotionClassifier(**PRESETS["small"])`` is the test model."""

Modality = Literal["video", "audio", "audio-video"]
MODALITIES: tuple[str, ...] = get_args(Modality)
"""What a model sees: the frames, the clip's log-mel, or both."""
DEFAULT_MODALITY_DROPOUT = 0.3
"""Share of training clips whose audio is replaced by the learned no-audio embedding."""


def _create_se_bottleneck_block(*, se_ratio: float, dim_inner: int, **kwargs: Any) -> nn.Module:
    """`create_bottleneck_block` with a Squeeze-and-Excitation block on its 3x3 conv.

    The SE block sits after ``norm_b`` and before the activation (X3D's placement), inside
    ``act_b``, so the pytorchvideo parameter names of the block stay unchanged and Kinetics
    weights still load by name. fvcore's SE takes ``num_channels``/``num_channels_reduced``
    where the bottleneck builder speaks of ``dim_inner``: this adapter translates.
    """
    block = create_bottleneck_block(dim_inner=dim_inner, **kwargs)
    activation = block.act_b if block.act_b is not None else nn.Identity()
    reduced = max(8, int(round(dim_inner * se_ratio / 8)) * 8) if dim_inner >= 8 else dim_inner
    block.act_b = nn.Sequential(
        SqueezeExcitation(num_channels=dim_inner, num_channels_reduced=reduced, is_3d=True),
        activation,
    )
    return block


def create_emotion_backbone(
    *,
    width: int = R50_WIDTH,
    use_se: bool = True,
    se_ratio: float = 0.0625,
) -> nn.Module:
    """SlowFast-R50 without its Kinetics head, pooling adaptively to any T, H, W.

    Input: ``[slow [B, 3, T/alpha, H, W], fast [B, 3, T, H, W]]``; output ``[B, F, 1, 1, 1]``
    where ``F = 32 * width + 4 * width`` (2304 for R50).
    """
    if width < 8 or width % 8:
        raise ValueError(f"width must be a multiple of 8 and >= 8, got {width}")
    builder: Callable[..., nn.Module] = (
        partial(_create_se_bottleneck_block, se_ratio=se_ratio) if use_se
        else create_bottleneck_block
    )
    return create_slowfast(
        model_depth=50,
        stem_dim_outs=(width, width // 8),
        bottleneck=((builder,) * 4,) * 2,
        head=None,  # replaced by EmotionClassifier.head
        head_pool=nn.AdaptiveAvgPool3d,
        head_output_size=(1, 1, 1),
    )


def create_x3d_xs_backbone(*, sampled_frames: int = X3D_FRAMES, use_se: bool = True
                           ) -> tuple[nn.Module, int]:
    """pytorchvideo's X3D-XS (depth 2.2, width 2.0) without its head, pooled to one vector:
    input ``[B, 3, sampled_frames, H, W]``, output ``[B, F, 1, 1, 1]``; returns it and F (192).
    """
    x3d = create_x3d(input_clip_length=sampled_frames, input_crop_size=112, width_factor=2.0,
                     depth_factor=2.2, se_ratio=0.0625 if use_se else 0.0, model_num_class=2)
    stages = list(x3d.blocks)[:-1]  # stem + 4 stages; the Kinetics head is replaced
    features = int(stages[-1].res_blocks[-1].branch2.conv_c.out_channels)
    return nn.Sequential(*stages, nn.AdaptiveAvgPool3d(1)), features


class EmotionClassifier(nn.Module):
    """SlowFast-R50 + SE and/or an audio encoder, then an MLP head; ``forward`` -> logits.

    Args:
        num_classes: number of outputs (6: ``EMOTION_LABELS``).
        hidden_size: units of the hidden layer of the head.
        dropout: dropout before the last linear layer.
        use_se: put Squeeze-and-Excitation blocks in every residual bottleneck.
        pretrained: False, or a path / URI / file object of Kinetics-400 ``SLOWFAST_8x8_R50``
            weights (a pytorchvideo checkpoint with ``model_state``, or a plain state dict) to
            initialise the backbone. ``True`` alone is an error: nothing is downloaded.
        width: slow-pathway stem channels; 64 is SlowFast-R50, 16 the ``small`` test variant.
        modality: ``"video"`` (default; exactly the model card's model), ``"audio"`` or
            ``"audio-video"``.
        audio_spec: the log-mel the audio encoder reads (default ``AudioSpec()``); audio
            models only.
        modality_dropout: audio models, training only: the probability that a clip's audio
            embedding is replaced by the learned no-audio embedding (0.3).
        backbone: ``"slowfast"`` (default: the model card's) or ``"x3d-xs"`` (the distillation
            student: pytorchvideo's X3D-XS over ``sampled_frames`` of the clip's frames, evenly
            spaced; same input contract, ``width`` unused).
        sampled_frames: X3D-XS only: frames of each clip it reads (4).

    T must be a multiple of 4 (the slow pathway takes every 4th frame); H = W of 112 or 224
    (any size >= 32 works: pooling adapts). Audio: at least 16 mel bands and 16 frames.
    """

    def __init__(
        self,
        num_classes: int = len(EMOTION_LABELS),
        hidden_size: int = 256,
        dropout: float = 0.5,
        use_se: bool = True,
        pretrained: bool | str | os.PathLike[str] | io.IOBase = False,
        *,
        width: int = R50_WIDTH,
        modality: Modality = "video",
        audio_spec: AudioSpec | None = None,
        modality_dropout: float = DEFAULT_MODALITY_DROPOUT,
        backbone: Backbone = "slowfast",
        sampled_frames: int = X3D_FRAMES,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        if backbone != "slowfast" and pretrained:
            raise ValueError("Kinetics weights are for the SlowFast backbone, not X3D-XS")
        if not 1 <= sampled_frames <= 64:
            raise ValueError(f"sampled_frames must be in [1, 64], got {sampled_frames}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        if modality == "video" and audio_spec is not None:
            raise ValueError("a video model takes no audio_spec (modality='video')")
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {modality_dropout}")
        self.modality: Modality = modality
        self.audio_spec: AudioSpec | None = None
        self.config: dict[str, Any] = {
            "num_classes": num_classes,
            "hidden_size": hidden_size,
            "dropout": dropout,
            "use_se": use_se,
            "width": width,
        }
        """The architecture as a deployment file records it (``modality`` and ``audio`` sit
        beside it); a SlowFast video model's has exactly these five keys, an X3D-XS one
        ``backbone`` and ``sampled_frames`` in place of ``width``."""
        self.backbone_name: Backbone = backbone
        features = 0
        if backbone == "x3d-xs":
            del self.config["width"]
            self.config.update(backbone=backbone, sampled_frames=int(sampled_frames))
        if modality != "audio" and backbone == "x3d-xs":
            self.backbone, x3d_features = create_x3d_xs_backbone(
                sampled_frames=sampled_frames, use_se=use_se)
            features += x3d_features
        elif modality != "audio":
            self.backbone = create_emotion_backbone(width=width, use_se=use_se)
            features += 32 * width + 4 * width  # slow stage-4 channels + fast stage-4 channels
        if modality != "video":
            self.audio_spec = audio_spec or AudioSpec()
            self.config["modality_dropout"] = float(modality_dropout)
            self.audio_encoder = AudioEncoder(n_mels=self.audio_spec.n_mels)
            if self.audio_spec.frames < AUDIO_MIN_SIZE:
                raise ValueError(f"the audio encoder needs >= {AUDIO_MIN_SIZE} log-mel frames, "
                                 f"got {self.audio_spec.frames}")
            self.no_audio = nn.Parameter(torch.zeros(self.audio_encoder.embed_dim))
            features += self.audio_encoder.embed_dim
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(features, hidden_size),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )
        if pretrained is True:
            raise ValueError(
                "pretrained=True needs a source: pass the path or URI of Kinetics-400 "
                "SLOWFAST_8x8_R50 weights (nothing is downloaded at run time)"
            )
        if pretrained and modality == "audio":
            raise ValueError("an audio model has no SlowFast backbone for Kinetics weights")
        if pretrained:
            load_kinetics_backbone(self, pretrained)

    @property
    def num_classes(self) -> int:
        """Number of output logits."""
        return int(self.config["num_classes"])

    @property
    def modality_dropout(self) -> float:
        """Training-time probability of dropping a clip's audio (0 for a video model)."""
        return float(self.config.get("modality_dropout", 0.0))

    def forward(
        self,
        frames: Tensor | None,
        audio: Tensor | None = None,
        audio_present: Tensor | None = None,
    ) -> Tensor:
        """Logits float32 ``[B, num_classes]`` from the modality's inputs.

        Args:
            frames: float32 ``[B, T, C, H, W]``, normalized; ignored (may be None) by an audio
                model.
            audio: float32 log-mel ``[B, n_mels, frames]`` or ``[B, 1, n_mels, frames]``;
                ignored by a video model. None: no clip has audio.
            audio_present: bool ``[B]``: which clips have audio; the others take the learned
                no-audio embedding (an audio model then predicts its prior). None: all
                present when ``audio`` is given, none otherwise.
        """
        parts: list[Tensor] = []
        if self.modality != "audio":
            if frames is None:
                raise ValueError(f"a {self.modality} model needs frames [B, T, C, H, W]")
            parts.append(self._video_features(frames).flatten(1))
        if self.modality != "video":
            parts.append(self._audio_embedding(frames, audio, audio_present))
        return self.head(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))

    def _video_features(self, x: Tensor) -> Tensor:
        """``[B, T, C, H, W]`` -> pooled SlowFast features ``[B, F, 1, 1, 1]``."""
        if x.ndim != 5:
            raise ValueError(f"expected input [B, T, C, H, W], got shape {tuple(x.shape)}")
        if self.backbone_name == "x3d-xs":
            return self.backbone(x.permute(0, 2, 1, 3, 4)[:, :, self._sampled(x.shape[1])])
        if x.shape[1] % SLOWFAST_ALPHA:
            raise ValueError(f"T must be a multiple of {SLOWFAST_ALPHA}, got T={x.shape[1]}")
        fast = x.permute(0, 2, 1, 3, 4)  # the one permute: [B, T, C, H, W] -> [B, C, T, H, W]
        slow = fast[:, :, ::SLOWFAST_ALPHA]  # temporal subsampling, [B, C, T/alpha, H, W]
        return self.backbone([slow, fast])

    def _sampled(self, t: int) -> slice:
        """The X3D student's frames of a ``t``-frame clip: ``sampled_frames`` evenly spaced,
        each the middle of its share (a slice, so the export stays one strided Slice)."""
        want = int(self.config["sampled_frames"])
        if t < want or t % want:
            raise ValueError(f"X3D-XS reads {want} evenly spaced frames: T must be a multiple "
                             f"of {want}, got T={t}")
        step = t // want
        return slice(step // 2, t, step)

    def _audio_embedding(
        self, frames: Tensor | None, audio: Tensor | None, present: Tensor | None
    ) -> Tensor:
        """``[B, embed_dim]``: each clip's audio embedding, or the no-audio one where its
        audio is absent or (training) dropped."""
        given = [int(t.shape[0]) for t in (audio, present) if t is not None]
        if frames is not None and self.modality != "audio":
            given.append(int(frames.shape[0]))
        if not given:
            raise ValueError("an audio model needs audio or audio_present to know the batch")
        if len(set(given)) > 1:
            raise ValueError(f"frames, audio and audio_present disagree on the batch: {given}")
        batch = given[0]
        if present is None:
            present = torch.full((batch,), audio is not None, dtype=torch.bool,
                                 device=self.no_audio.device)
        elif present.ndim != 1:
            raise ValueError(f"audio_present must be bool [B], got shape {tuple(present.shape)}")
        present = present.to(device=self.no_audio.device, dtype=torch.bool)
        if audio is None:
            if bool(present.any()):
                raise ValueError("audio_present says some clips have audio, but no audio given")
            return self.no_audio.expand(batch, -1)
        if not self.training:  # every row through the encoder: static shapes, exportable
            return torch.where(present[:, None], self.audio_encoder(audio), self.no_audio)
        keep = present
        if self.modality_dropout > 0:
            drop = torch.rand(batch, device=present.device) < self.modality_dropout
            keep = present & ~drop
        # only the clips whose sound is used pass the encoder, so its batch norm statistics
        # come from real sound, not from the placeholders of clips without audio
        embedding = self.no_audio.expand(batch, -1).clone()
        if bool(keep.any()):
            embedding[keep] = self.audio_encoder(audio[keep]).to(embedding.dtype)
        return embedding


def build_model(
    preset: Literal["r50", "small", "student"] | None = None,
    *,
    modality: Modality = "video",
    audio_spec: AudioSpec | None = None,
    **kwargs: Any,
) -> EmotionClassifier:
    """Build an EmotionClassifier from a named preset plus keyword overrides."""
    arch = dict(PRESETS[preset]) if preset else {}
    arch.update(kwargs)
    return EmotionClassifier(**arch, modality=modality, audio_spec=audio_spec)


def modality_of_state(state: Mapping[str, Any]) -> Modality | None:
    """The modality whose parameter names a state dict holds (backbone and/or audio encoder),
    or None when it holds neither."""
    video = any(k.startswith("backbone.") for k in state)
    audio = any(k.startswith(("audio_encoder.", "no_audio")) for k in state)
    if video and audio:
        return "audio-video"
    return "video" if video else "audio" if audio else None


def load_kinetics_backbone(
    model: EmotionClassifier, source: str | os.PathLike[str] | io.IOBase
) -> list[str]:
    """Load Kinetics-400 SlowFast-R50 backbone weights; the head stays freshly initialised.

    Accepts pytorchvideo's checkpoint layout (``{"model_state": {...}}``), a plain state dict,
    or safetensors. Keys ``blocks.N.*`` map to ``backbone.blocks.N.*``; the Kinetics head
    (``blocks.6``) is dropped. Returns the backbone keys left at their initial values (the SE
    blocks, which Kinetics weights do not have). Raises ArchitectureMismatchError when a
    tensor's shape differs (e.g. weights of another width or depth).
    """
    name = source_name(source)
    state = read_state_dict(source)
    own = model.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("model.")
        if key.startswith("blocks.6") or not key.startswith("blocks."):
            continue
        target = f"backbone.{key}"
        if target not in own:
            raise ArchitectureMismatchError(name, f"unexpected Kinetics key {key!r}")
        if own[target].shape != value.shape:
            raise ArchitectureMismatchError(
                name,
                f"{key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[target].shape)} (SlowFast-R50 at width {model.config['width']}?)",
            )
        mapped[target] = value
    if not mapped:
        raise CheckpointError(name, "no SlowFast backbone weights (blocks.*) found")
    missing = [k for k in own if k.startswith("backbone.") and k not in mapped]
    non_se = [k for k in missing if ".act_b." not in k]
    if non_se:
        raise ArchitectureMismatchError(
            name, f"{len(non_se)} backbone tensors missing, e.g. {non_se[0]!r}"
        )
    model.load_state_dict(mapped, strict=False)
    return missing
