"""Validated settings of the ``distill`` flow, and the recipe of one run once its teacher is
known (`DistillRecipe`: the run key holds the teacher's version)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tasks.common.settings import FlowSettings, check_uri, check_uris
from tasks.common.storage import join

STUDENT_POINTER = "student.json"
"""The registry's pointer to the current student; ``production.json`` is never touched."""


class DistillSettings(FlowSettings):
    """Parameters of one ``distill`` run; every field is checked before any work."""

    teacher: str = Field(
        description="The model to copy: a deployment file, or a registry's production.json "
        "(path or s3:// URI). The student reads the clips it reads (frames, size, crop, sound)."
    )
    registry: str = Field(
        description="Registry folder or s3:// prefix: the student is published to "
        "<registry>/<model_version>/ and <registry>/student.json (production.json untouched)."
    )
    sources: list[str] | None = Field(
        default=None, validate_default=True,
        description="Unlabelled video folders or s3:// prefixes (an archive): the teacher labels "
        "them. Actors are read from RAVDESS or CREMA-D names where they parse (the split is by "
        "actor), each video is its own group otherwise.",
    )
    labelled: list[str] | None = Field(
        default=None, validate_default=True,
        description="Labelled sources as retrain takes them (RAVDESS or CREMA-D layouts, or "
        "manifests with uri, label, actor): their labels add a cross-entropy term, and their "
        "held-out actors give accuracy beside the teacher's.",
    )
    cache: str | None = Field(
        default=None, description="Clip cache folder or s3:// prefix (default <registry>/cache); "
        "the teacher's outputs are cached beside the clips, under teacher/<teacher version>/."
    )
    checkpoint_dir: str | None = Field(
        default=None, description="Where the per-epoch training checkpoint goes (default "
        "<registry>/training/<run_key>)."
    )
    preset: Literal["student", "small"] = Field(
        default="student", description="student (X3D-XS over 4 frames of each clip: the edge "
        "model) or small (the width-16 SlowFast)."
    )
    temperature: float = Field(
        default=4.0, ge=1.0, le=20.0, description="Softens teacher and student probabilities "
        "in the KL term (the term is scaled by temperature^2, so its gradients keep their size)."
    )
    kd_weight: float = Field(
        default=1.0, ge=0.0, le=100.0, description="Weight of the KL term (teacher -> student)."
    )
    label_weight: float = Field(
        default=0.5, ge=0.0, le=100.0, description="Weight of the cross-entropy on the labelled "
        "clips (0: labels only evaluate)."
    )
    clip_seconds: float = Field(default=4.0, gt=0, le=600, description="Clip window length.")
    max_clips_per_video: int = Field(
        default=4, ge=1, le=64, description="Clips cached (and labelled by the teacher) per video."
    )
    epochs: int = Field(default=30, ge=1, le=1000, description="Epochs planned (one cycle).")
    patience: int = Field(
        default=10, ge=1, le=1000, description="Stop after this many epochs without a better "
        "validation agreement with the teacher, counted after the warm-up (30% of the epochs)."
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=1024, description="Clips per step (default CPU 8, GPU 16)."
    )
    lr: float = Field(default=3e-3, gt=0, le=1.0, description="Peak learning rate (one cycle).")
    weight_decay: float = Field(default=0.05, ge=0, le=1.0, description="AdamW weight decay.")
    crop_scale: float = Field(
        default=0.8, ge=0.3, le=1.0, description="Random resized crop: smallest share of the "
        "frame area kept (1: no crop)."
    )
    grad_clip: float | None = Field(
        default=1.0, gt=0, description="Max gradient norm (None: no clipping)."
    )
    val_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Fraction of actors (or of videos, where actors "
        "are unknown) held out to measure agreement."
    )
    seed: int = Field(default=0, ge=0, description="Seed of the split, the shuffles and weights.")
    resume: bool = Field(
        default=False, description="Continue from the last checkpoint of the same run key "
        "(the same data, recipe and teacher version)."
    )
    min_agreement: float = Field(
        default=0.8, ge=0, le=1, description="student.json moves to the new student only when "
        "its top-1 agreement with the teacher on held-out videos reaches this (force overrides)."
    )
    force: bool = Field(
        default=False, description="Point student.json at the new student whatever its agreement."
    )

    @field_validator("sources", "labelled")
    @classmethod
    def _sources(cls, value: list[str] | None) -> list[str]:
        return check_uris(value)  # None: none given

    @field_validator("teacher", "registry", "cache", "checkpoint_dir")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value)

    @model_validator(mode="after")
    def _some_data(self) -> DistillSettings:
        if not self.sources and not self.labelled:
            raise ValueError("give unlabelled sources, labelled sources or both: there is "
                             "nothing to distill on")
        if self.kd_weight == 0 and self.label_weight == 0:
            raise ValueError("kd_weight and label_weight are both 0: nothing to learn")
        return self

    @property
    def cache_uri(self) -> str:
        """The clip cache prefix."""
        return self.cache or join(self.registry, "cache")


@dataclass(frozen=True)
class DistillRecipe:
    """One run's settings with its teacher resolved: what `train` reads (`TrainingRecipe`),
    with a run key that holds the teacher's version and its input contract (a new teacher never
    resumes another's checkpoint)."""

    settings: DistillSettings
    teacher_version: str
    num_frames: int
    img_size: int

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "settings":  # copy/pickle probe before __init__
            raise AttributeError(name)
        return getattr(self.settings, name)

    def run_key(self) -> str:
        """A stable key of what is distilled: data, split, recipe, teacher."""
        exclude = {"resume", "force", "min_agreement", "device", "decode_threads",
                   "storage_options", "cache", "checkpoint_dir", "registry", "teacher"}
        fields = self.settings.model_dump(exclude=exclude)
        fields.update(flow="distill", teacher_version=self.teacher_version,
                      num_frames=self.num_frames, img_size=self.img_size)
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def checkpoint_uri(self) -> str:
        """The folder of this run's training checkpoint."""
        return self.settings.checkpoint_dir or join(self.settings.registry, "training",
                                                    self.run_key())
