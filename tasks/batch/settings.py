"""Validated settings of the batch-inference flow, shared by the flow and its tasks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from tasks.common.settings import FlowSettings, check_uri

_DASK_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


class BatchSettings(FlowSettings):
    """Parameters of one ``batch-inference`` run; every field is checked before any work."""

    source: str = Field(
        description="Where the videos are: s3://bucket/prefix, file:///path or a local folder."
    )
    output: str = Field(
        default="./outputs",
        description="Where predictions/, videos/, errors/ and runs/ go (folder or s3:// prefix).",
    )
    model: str = Field(
        description="Deployment file (.safetensors) path or URI, or a registry's production.json; "
        "an .onnx file (export --format onnx, float or --int8) is served by ONNX Runtime on the "
        "CPU.",
    )
    clip_seconds: float = Field(default=4.0, gt=0, le=600, description="Clip window length.")
    stride_seconds: float | None = Field(
        default=None, gt=0, le=600, description="Seconds between window starts (default: clip)."
    )
    detect_fps: float | None = Field(
        default=None, gt=0, le=120,
        description="Face models: face detections per second of video (default: the model's, "
        "5); the first frame of every clip window is always looked at.",
    )
    max_faces: int = Field(
        default=4, ge=1, le=64,
        description="Face models: face tracks kept per video, the largest and longest first.",
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=1024,
        description="Clips per model call; default: the device's best (CPU 2, GPU 32).",
    )
    shard_size: int = Field(default=64, ge=1, le=100_000, description="Videos per shard task.")
    max_videos: int | None = Field(default=None, ge=1, description="Process at most this many.")
    reprocess: bool = Field(default=False, description="Redo videos already recorded as done.")
    queue_depth: int | None = Field(
        default=None, ge=1, le=4096, description="Decoded clips held in memory (2 x batch, >= 8)."
    )
    shard_concurrency: int = Field(
        default=1, ge=1, le=256,
        description="Shard tasks running at once on this machine (task_runner threads).",
    )
    task_runner: Literal["threads", "dask"] = Field(
        default="threads",
        description="Where shard tasks run: threads of this process, or a Dask cluster.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (dask).",
    )
    dask_local_workers: int | None = Field(
        default=None, ge=1, le=256, validate_default=True,
        description="Worker processes of a Dask cluster started on this machine (dask).",
    )
    drift_threshold: float = Field(
        default=0.1, gt=0, le=1,
        description="Label drift is flagged when the Jensen-Shannon distance (base 2, 0-1) "
        "between this run's label mix and the trailing runs' exceeds this (0.1: about 10 "
        "percentage points of the videos changing label).",
    )
    drift_window: int = Field(
        default=7, ge=1,
        description="Trailing runs on the same output (completed, with labelled videos) whose "
        "pooled label mix this run is compared with.",
    )

    @field_validator("source", "output", "model")
    @classmethod
    def _uri(cls, value: str) -> str:
        return check_uri(value)

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("task_runner") != "dask":
            raise ValueError("is only used with task_runner='dask'")
        value = value.strip()
        scheme, _, rest = value.rpartition("://")
        host, _, port = rest.rpartition(":")
        if (scheme and scheme not in _DASK_SCHEMES) or not host or not port.isdigit():
            raise ValueError(
                f"must be a Dask scheduler address like tcp://host:8786, got {value!r}"
            )
        return value

    @field_validator("dask_local_workers")
    @classmethod
    def _dask_local_workers(cls, value: int | None, info: ValidationInfo) -> int | None:
        runner, address = info.data.get("task_runner"), info.data.get("dask_address")
        if runner != "dask":
            if value is not None:
                raise ValueError("is only used with task_runner='dask'")
        elif value is not None and address is not None:
            raise ValueError("give dask_address (an existing cluster) or dask_local_workers "
                             "(a local cluster), not both")
        elif value is None and address is None and "dask_address" in info.data:
            raise ValueError("task_runner='dask' needs dask_address (an existing cluster) or "
                             "dask_local_workers (a local cluster)")
        return value

    @field_validator("stride_seconds")
    @classmethod
    def _stride(cls, value: float | None, info: ValidationInfo) -> float | None:
        # a field validator (not a model one), so the error names 'stride_seconds'
        clip = info.data.get("clip_seconds")
        # with a relative tolerance: 10 * 0.09 is 0.8999999999999999 in binary floating point
        if value is not None and clip is not None and value > 10 * clip * (1 + 1e-9):
            raise ValueError(f"must be at most 10 x clip_seconds ({10 * clip:g}), got {value:g}")
        return value

    def clip_queue_depth(self, batch_size: int) -> int:
        """Bound of the decoded-clip queue: ``queue_depth``, or twice the batch (at least 8)."""
        return self.queue_depth or max(8, 2 * batch_size)
