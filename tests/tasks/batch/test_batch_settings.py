"""BatchSettings rules not covered elsewhere: queue bound, stride limit, frozen, extra=forbid."""

# Each bad value of each parameter: tests/reliability/test_parameters.py; the Dask fields
# (task_runner, dask_address, dask_local_workers): tests/flows/test_dask.py.

from __future__ import annotations

import pickle
from typing import Any

import pytest
from pydantic import ValidationError

from tasks.batch.settings import BatchSettings
from tasks.errors import InvalidSettingsError

BASE: dict[str, Any] = {"source": "videos/", "model": "model.safetensors"}


def make(**overrides: Any) -> BatchSettings:
    return BatchSettings.from_parameters(**{**BASE, **overrides})


def test_defaults() -> None:
    s = make()
    assert (s.source, s.model, s.output) == ("videos/", "model.safetensors", "./outputs")
    assert (s.clip_seconds, s.stride_seconds, s.batch_size, s.shard_size) == (4.0, None, None, 64)
    assert (s.max_videos, s.reprocess, s.queue_depth, s.shard_concurrency) == (None, False, None,
                                                                                1)
    assert (s.task_runner, s.dask_address, s.dask_local_workers) == ("threads", None, None)
    assert (s.device, s.decode_threads, s.storage_options) == ("auto", 2, None)


def test_uris_are_stripped() -> None:
    s = make(source="  s3://bucket/in/ ", output="\t/data/out ", model=" reg/production.json\n")
    assert (s.source, s.output, s.model) == ("s3://bucket/in/", "/data/out",
                                             "reg/production.json")


# --- clip_queue_depth ----------------------------------------------------------------------------
@pytest.mark.parametrize(("batch_size", "depth"), [(1, 8), (2, 8), (4, 8), (5, 10), (32, 64),
                                                   (1024, 2048)])
def test_clip_queue_is_twice_the_batch_and_at_least_eight(batch_size: int, depth: int) -> None:
    assert make().clip_queue_depth(batch_size) == depth


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_queue_depth_wins_whatever_the_batch(batch_size: int) -> None:
    assert make(queue_depth=3).clip_queue_depth(batch_size) == 3
    assert make(queue_depth=4096).clip_queue_depth(batch_size) == 4096


# --- stride vs clip ------------------------------------------------------------------------------
@pytest.mark.parametrize(("clip", "stride"), [(4.0, 40.0), (0.5, 5.0), (1.0, 0.01), (60.0, 600.0),
                                              (0.1, 1.0), (0.25, 2.5)])
def test_stride_up_to_ten_clips_is_accepted(clip: float, stride: float) -> None:
    assert make(clip_seconds=clip, stride_seconds=stride).stride_seconds == stride


@pytest.mark.parametrize(("clip", "stride", "limit"), [(4.0, 40.001, "40"), (0.5, 5.5, "5"),
                                                       (1.5, 15.01, "15")])
def test_stride_beyond_ten_clips_names_the_limit(clip: float, stride: float, limit: str) -> None:
    with pytest.raises(InvalidSettingsError,
                       match=rf"^invalid parameter 'stride_seconds': Value error, must be at most "
                             rf"10 x clip_seconds \({limit}\), got {stride:g}$"):
        make(clip_seconds=clip, stride_seconds=stride)


@pytest.mark.parametrize(("clip", "stride"), [(0.09, 0.9), (1.13, 11.3)])
def test_stride_of_exactly_ten_clips_is_accepted_for_every_clip_length(
    clip: float, stride: float
) -> None:
    assert make(clip_seconds=clip, stride_seconds=stride).stride_seconds == stride


def test_a_bad_clip_length_is_reported_alone_not_again_as_a_stride_error() -> None:
    with pytest.raises(InvalidSettingsError, match=r"^invalid parameter 'clip_seconds': ") as r:
        make(clip_seconds=0, stride_seconds=100.0)
    assert str(r.value).count("invalid parameter") == 1


def test_stride_above_600_seconds_is_refused_by_its_own_bound() -> None:
    with pytest.raises(InvalidSettingsError, match="'stride_seconds': Input should be less than "
                                                   "or equal to 600"):
        make(clip_seconds=600, stride_seconds=601)


# --- frozen, extra=forbid, travels to workers ----------------------------------------------------
def test_settings_are_frozen() -> None:
    s = make(shard_size=8)
    with pytest.raises(ValidationError, match="Instance is frozen"):
        s.shard_size = 16  # type: ignore[misc]
    assert s.shard_size == 8


@pytest.mark.parametrize("name", ["shard", "threads", "model_path", "Source"])
def test_unknown_parameters_are_refused_by_name(name: str) -> None:
    with pytest.raises(InvalidSettingsError,
                       match=rf"^invalid parameter '{name}': Extra inputs are not permitted$"):
        make(**{name: 1})


def test_several_bad_fields_one_line_in_field_order() -> None:
    with pytest.raises(ValueError, match="invalid parameter 'batch_size'") as raised:
        make(shard_size=0, batch_size=0, output="")
    fields = [p.split("'")[1] for p in str(raised.value).split("; ")]
    assert fields == ["output", "batch_size", "shard_size"]


def test_settings_survive_pickling_with_their_values() -> None:
    """Shard tasks on a Dask cluster receive the settings pickled."""
    s = make(task_runner="dask", dask_local_workers=2, storage_options={"anon": True},
             clip_seconds=2.0, stride_seconds=1.0, queue_depth=16)
    copy = pickle.loads(pickle.dumps(s))
    assert copy == s and copy is not s
    assert copy.clip_queue_depth(2) == 16 and copy.storage_options == {"anon": True}
