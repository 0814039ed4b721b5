"""Validated settings of the ``retrain`` flow, shared by the flow and its tasks."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, field_validator, model_validator

from emotion_model.audio import AudioSpec
from emotion_model.face_clips import CropSpec
from tasks.common.settings import FlowSettings, check_uri, check_uris
from tasks.common.storage import join


class RetrainSettings(FlowSettings):
    """Parameters of one ``retrain`` run; every field is checked before any work."""

    sources: list[str] = Field(
        min_length=1,
        description="Folders or s3:// prefixes in RAVDESS or CREMA-D layout, or manifests "
        "(.csv or .parquet with columns uri, label, actor).",
    )
    registry: str = Field(
        description="Model registry folder or s3:// prefix: <registry>/<model_version>/ and "
        "<registry>/production.json."
    )
    cache: str | None = Field(
        default=None, description="Clip cache folder or s3:// prefix (default <registry>/cache)."
    )
    checkpoint_dir: str | None = Field(
        default=None,
        description="Where the per-epoch training checkpoint goes (default "
        "<registry>/training/<run_key>); durable storage so a lost spot instance can resume.",
    )
    preset: Literal["r50", "small"] = Field(
        default="r50", description="r50 (the model card) or small (width 16, for CPUs)."
    )
    modality: Literal["video", "audio", "audio-video"] = Field(
        default="video", description="What the model reads: video (the frames: the model "
        "card's model), audio (each clip's log-mel: a small CNN, no SlowFast) or audio-video "
        "(both, fused before the head, with modality dropout so it still predicts without "
        "sound). Audio models keep RAVDESS's audio-video copies (modality 01)."
    )
    num_frames: int = Field(default=48, ge=4, le=256, description="Frames per clip (x4).")
    img_size: int = Field(default=112, ge=32, le=448, description="Frame height and width.")
    clip_seconds: float = Field(default=4.0, gt=0, le=600, description="Clip window length.")
    crop: Literal["face", "frame"] = Field(
        default="face", description="face: clips cut around the actor's face (detected and "
        "tracked while decoding); frame: the whole frame resized (the model card's way). "
        "Recorded in the model file; serving cuts clips the same way."
    )
    detect_fps: float = Field(
        default=5.0, gt=0, le=120, description="face crops: face detections per second of video."
    )
    max_clips_per_video: int = Field(
        default=4, ge=1, le=64, description="Training clips cached per video (windows)."
    )
    epochs: int = Field(default=60, ge=1, le=1000, description="Epochs planned (one cycle).")
    patience: int = Field(
        default=10, ge=1, le=1000, description="Stop after this many epochs without a better "
        "validation accuracy, counted only after the one-cycle warm-up (the first 30% of the "
        "epochs)."
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=1024, description="Clips per step (default CPU 8, GPU 16)."
    )
    lr: float = Field(default=1e-3, gt=0, le=1.0, description="Peak learning rate (one cycle).")
    weight_decay: float = Field(default=0.05, ge=0, le=1.0, description="AdamW weight decay.")
    label_smoothing: float = Field(default=0.05, ge=0, lt=1.0, description="Cross-entropy.")
    crop_scale: float = Field(
        default=0.8, ge=0.3, le=1.0, description="Random resized crop: smallest share of the "
        "frame area kept (1: no crop)."
    )
    grad_clip: float | None = Field(
        default=1.0, gt=0, description="Max gradient norm (None: no clipping)."
    )
    val_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Fraction of actors held out for validation."
    )
    seed: int = Field(default=0, ge=0, description="Seed of the split, the shuffles and weights.")
    init: str | None = Field(
        default=None, description="Start from this deployment file (fine-tune)."
    )
    pretrained: str | None = Field(
        default=None, description="Kinetics-400 SlowFast-R50 weights (path or URI) for the "
        "backbone."
    )
    resume: bool = Field(
        default=False, description="Continue from the last checkpoint of the same run key."
    )
    force: bool = Field(
        default=False, description="Promote the candidate even when it does not beat production "
        "or the floor."
    )
    min_val_accuracy: float = Field(
        default=0.4, ge=0, le=1, description="Promotion floor: a candidate with a lower "
        "validation accuracy is published but never promoted (force overrides). Chance is 0.167 "
        "for six classes; 0.4 is well above what a model that learned nothing scores on a small "
        "validation split."
    )

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        return check_uris(value)

    @field_validator("registry", "cache", "checkpoint_dir", "init", "pretrained")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_uri(value)

    @field_validator("num_frames")
    @classmethod
    def _frames(cls, value: int) -> int:
        if value % 4:
            raise ValueError(f"must be a multiple of 4 (the slow pathway takes every 4th), "
                             f"got {value}")
        return value

    @model_validator(mode="after")
    def _init_or_pretrained(self) -> RetrainSettings:
        if self.init and self.pretrained:
            raise ValueError("give init (a deployment file) or pretrained (Kinetics weights), "
                             "not both")
        if self.pretrained and self.preset != "r50":
            raise ValueError("pretrained Kinetics weights fit the r50 preset only")
        if self.pretrained and self.modality == "audio":
            raise ValueError("pretrained Kinetics weights are for the SlowFast backbone, which "
                             "an audio model does not have")
        spec = self.audio_spec()
        if spec is not None:
            from emotion_model.audio_model import AUDIO_MIN_SIZE  # torch: audio models only
        if spec is not None and spec.frames < AUDIO_MIN_SIZE:
            raise ValueError(f"an {self.modality} model needs clip_seconds >= "
                             f"{AUDIO_MIN_SIZE * spec.hop_length / spec.sample_rate:g} "
                             f"({AUDIO_MIN_SIZE} log-mel frames), got {self.clip_seconds}")
        return self

    # -- derived -------------------------------------------------------------------------------
    def crop_spec(self) -> CropSpec:
        """The crop the model is trained with (and that its file records)."""
        return CropSpec.of(self.crop, detect_fps=self.detect_fps)

    def audio_spec(self) -> AudioSpec | None:
        """The log-mel an audio model is trained on (and that its file records): the default
        `AudioSpec` over the clip window (``seconds = clip_seconds``); None for video."""
        if self.modality == "video":
            return None
        return AudioSpec(seconds=self.clip_seconds)

    @property
    def cache_uri(self) -> str:
        """The clip cache prefix."""
        return self.cache or join(self.registry, "cache")

    def run_key(self) -> str:
        """A stable key of what is trained (data, split, model, recipe): resume finds its
        checkpoint by it, and a changed recipe never resumes from another's checkpoint. A video
        model's key leaves ``modality`` out: it is the key the run had before audio models."""
        exclude = {"resume", "force", "min_val_accuracy", "device", "decode_threads",
                   "storage_options", "cache", "checkpoint_dir", "registry"}
        if self.modality == "video":
            exclude.add("modality")
        fields = self.model_dump(exclude=exclude)
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def checkpoint_uri(self) -> str:
        """The folder of this run's training checkpoint."""
        return self.checkpoint_dir or join(self.registry, "training", self.run_key())
