"""Training data: labels from both naming conventions and manifests, the split by actor, and
the clip cache (decode once, keyed by what changes the clips), locally and on S3."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotion_model.synthetic import make_sample_dataset
from tasks.training_data import (
    ClipCache,
    ClipSpec,
    Example,
    build_cache,
    cache_key,
    collect_examples,
    split_by_actor,
)

SPEC = ClipSpec(num_frames=8, img_size=32, clip_seconds=4.0, max_clips=2)


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RAVDESS tree (3 actors) and a CREMA-D folder (3 actors) of tiny synthetic videos,
    plus the things a real archive has: calm and surprised takes, an audio-video copy of a
    video-only performance, a name that parses as neither, a corrupt file."""
    root = tmp_path_factory.mktemp("labelled")
    make_sample_dataset(root / "ravdess", actors=3, layout="ravdess", seconds=0.6, fps=10,
                        size=(48, 48), emotions=("angry", "happy", "sad"))
    make_sample_dataset(root / "crema", actors=3, layout="crema-d", seconds=0.6, fps=10,
                        size=(48, 48), emotions=("angry", "neutral"), seed=1)
    actor = root / "ravdess" / "Actor_01"
    some = sorted(actor.glob("*.mp4"))[0]
    parts = some.name.split("-")
    shutil.copy(some, actor / "-".join(["01", *parts[1:]]))  # audio-video copy of the same take
    shutil.copy(some, actor / "-".join([*parts[:2], "02", *parts[3:]]))  # calm
    shutil.copy(some, actor / "-".join([*parts[:2], "08", *parts[3:]]))  # surprised
    shutil.copy(some, root / "ravdess" / "holiday_clip.mp4")  # no convention
    (root / "crema" / "1003_IEO_SAD_HI.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" * 5)
    return root


def test_both_conventions_label_and_report(two_layouts: Path) -> None:
    examples, report = collect_examples([str(two_layouts / "ravdess"),
                                         str(two_layouts / "crema")])
    by_dataset = {d: [e for e in examples if e.dataset == d] for d in ("ravdess", "crema-d")}
    assert len(by_dataset["ravdess"]) == 9  # 3 actors x 3 emotions; the 01 copy is dropped
    assert len(by_dataset["crema-d"]) == 7  # 3 x 2 + the corrupt one (found by the cache)
    assert {e.label for e in by_dataset["ravdess"]} == {"angry", "happy", "sad"}
    assert {e.actor for e in by_dataset["crema-d"]} == {"crema-d:1001", "crema-d:1002",
                                                          "crema-d:1003"}
    assert report.outside_classes == {"calm": 1, "surprised": 1}
    assert report.unparsed == 1 and report.unparsed_examples[0].endswith("holiday_clip.mp4")
    assert report.duplicates_removed == 1
    kept = [e for e in by_dataset["ravdess"] if e.actor == "ravdess:01" and e.label == "angry"]
    assert len(kept) == 1 and Path(kept[0].uri).name.startswith("02-")  # video-only kept
    assert report.listed == report.used + report.unparsed + 2 + report.duplicates_removed


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_relative_uris_and_missing_rows(two_layouts: Path, tmp_path: Path,
                                                 fmt: str) -> None:
    videos = sorted((two_layouts / "crema").glob("100[12]_*.mp4"))
    link = tmp_path / "clips"
    link.symlink_to(two_layouts / "crema")
    rows = [{"uri": f"clips/{p.name}", "label": "ANGRY" if "ANG" in p.name else "neutral",
             "actor": f"speaker-{p.name[:4]}"} for p in videos]
    rows.append({"uri": "clips/gone.mp4", "label": "sad", "actor": "x"})
    rows.append({"uri": str(videos[0]), "label": "calm", "actor": "x"})
    manifest = tmp_path / f"manifest.{fmt}"
    table = pd.DataFrame(rows)
    table.to_csv(manifest, index=False) if fmt == "csv" else table.to_parquet(manifest)

    examples, report = collect_examples([str(manifest)])
    assert len(examples) == len(videos) == 4
    assert {e.label for e in examples} == {"angry", "neutral"}
    assert {e.actor for e in examples} == {"speaker-1001", "speaker-1002"}
    assert all(Path(e.uri).exists() and e.dataset == "manifest" for e in examples)
    assert report.missing == 1 and report.missing_examples[0].endswith("gone.mp4")
    assert report.outside_classes == {"calm": 1}


def test_manifest_without_required_columns_is_one_line_error(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.csv"
    manifest.write_text("path,emotion\na.mp4,happy\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['actor', 'label', 'uri'\]"):
        collect_examples([str(manifest)])


def _fake_examples(actors_per_dataset: dict[str, int], per_actor: int = 6) -> list[Example]:
    labels = ["angry", "disgust", "fearful", "happy", "neutral", "sad"]
    return [
        Example(f"/{d}/{a}/{k}.mp4", "e", 1, labels[k % 6], f"{d}:{a}", d)
        for d, n in actors_per_dataset.items() for a in range(n) for k in range(per_actor)
    ]


@pytest.mark.parametrize("seed", range(25))
def test_split_never_puts_an_actor_on_both_sides(seed: int) -> None:
    rng = random.Random(seed)
    sizes = {"ravdess": rng.randint(1, 24), "crema-d": rng.randint(1, 91)}
    fraction = rng.choice([0.1, 0.2, 0.34, 0.5, 0.8])
    examples = _fake_examples(sizes, per_actor=rng.randint(1, 8))
    split = split_by_actor(examples, fraction, seed)
    assert not set(split.train_actors) & set(split.val_actors)
    assert len(split.train) + len(split.val) == len(examples)
    assert split.train and split.val
    for dataset, n in sizes.items():  # stratified: each dataset gives its share
        held = [a for a in split.val_actors if a.startswith(dataset)]
        if n >= 2:
            assert 1 <= len(held) <= n - 1
            assert abs(len(held) - n * fraction) <= 1


def test_split_is_stable_under_listing_order_and_new_actors() -> None:
    examples = _fake_examples({"ravdess": 20})
    split = split_by_actor(examples, 0.25, seed=7)
    shuffled = list(reversed(examples))
    assert split_by_actor(shuffled, 0.25, seed=7).val_actors == split.val_actors
    assert split_by_actor(examples, 0.25, seed=8).val_actors != split.val_actors
    assert split.as_dict()["val_actors"] == split.val_actors


def test_split_needs_two_actors() -> None:
    with pytest.raises(ValueError, match="at least 2 actors"):
        split_by_actor(_fake_examples({"ravdess": 1}), 0.2, 0)


def test_cache_decodes_each_video_once_and_skips_corrupt(two_layouts: Path,
                                                         tmp_path: Path) -> None:
    examples, _ = collect_examples([str(two_layouts / "crema")])
    cache = ClipCache(str(tmp_path / "cache"), SPEC)
    seen: list[bool] = []
    kept, first = build_cache(cache, examples, threads=2, on_video=lambda e, ok: seen.append(ok))
    assert first.decoded == 6 and first.cached == 0 and len(kept) == 6
    assert [uri for uri, _ in first.corrupt] == [str(two_layouts / "crema" / "1003_IEO_SAD_HI.mp4")]
    assert "CorruptVideoError" in first.corrupt[0][1] and "\n" not in first.corrupt[0][1]
    assert sorted(seen) == [False] + [True] * 6

    clips = cache.load(kept[0])
    assert clips.dtype == np.uint8 and clips.shape[1:] == (16, 32, 32, 3)  # 2 x num_frames
    _, second = build_cache(ClipCache(str(tmp_path / "cache"), SPEC), kept)
    assert second.decoded == 0 and second.cached == 6  # later epochs and retrains: no decode


def test_cache_key_follows_what_changes_the_clips(two_layouts: Path) -> None:
    e = collect_examples([str(two_layouts / "crema")])[0][0]
    keys = {
        cache_key(e, SPEC),
        cache_key(e, ClipSpec(12, 32, 4.0, 2)),
        cache_key(e, ClipSpec(8, 48, 4.0, 2)),
        cache_key(Example(e.uri, "other-etag", e.size, e.label, e.actor, e.dataset), SPEC),
    }
    assert len(keys) == 4
    assert cache_key(e, SPEC) == cache_key(e, ClipSpec(8, 32, 4.0, 2))


def test_cache_on_s3(two_layouts: Path, s3_server, s3_bucket: str, tmp_path: Path) -> None:
    client = s3_server.client()
    for path in sorted((two_layouts / "ravdess" / "Actor_02").glob("*.mp4")):
        client.upload_file(str(path), s3_bucket, f"data/Actor_02/{path.name}")
    options = {"endpoint_url": s3_server.endpoint_url}
    examples, _ = collect_examples([f"s3://{s3_bucket}/data"], options)
    assert len(examples) == 3 and all(e.uri.startswith("s3://") and e.etag for e in examples)
    cache = ClipCache(f"s3://{s3_bucket}/cache", SPEC, options, local_dir=tmp_path / "a")
    kept, report = build_cache(cache, examples)
    assert report.decoded == 3
    keys = client.list_objects_v2(Bucket=s3_bucket, Prefix="cache/clips/")["Contents"]
    assert len(keys) == 3
    fresh = ClipCache(f"s3://{s3_bucket}/cache", SPEC, options, local_dir=tmp_path / "b")
    _, again = build_cache(fresh, kept)  # another machine: the cache is found on S3
    assert again.cached == 3 and again.decoded == 0
    np.testing.assert_array_equal(fresh.load(kept[0]), cache.load(kept[0]))


def test_real_clips_parse_and_decode_through_the_cache(shared_data: Path,
                                                       tmp_path: Path) -> None:
    examples, report = collect_examples([str(shared_data / "crema_d"),
                                         str(shared_data / "ravdess")])
    assert {(e.label, e.actor) for e in examples} == {
        ("angry", "crema-d:1001"), ("happy", "crema-d:1001"), ("neutral", "crema-d:1001"),
        ("sad", "crema-d:1001")}
    assert report.outside_classes == {"surprised": 1}  # the RAVDESS clip is emotion 08
    cache = ClipCache(str(tmp_path / "cache"), ClipSpec(16, 64, 4.0, 2))
    kept, cache_report = build_cache(cache, examples)
    assert len(kept) == 4 and not cache_report.corrupt
    for e in kept:
        clips = cache.load(e)
        assert clips.shape[1:] == (32, 64, 64, 3) and clips.std() > 5  # real pictures
