"""Labelled data: both naming conventions, manifests, what is reported rather than raised."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.training.data import collect_examples


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


def test_a_model_that_reads_audio_keeps_the_ravdess_copy_with_sound(two_layouts: Path) -> None:
    """RAVDESS modality 01 (audio-video) and 02 (video-only) of one performance: a video model
    keeps 02 (as always), a model that reads audio the 01 copy; the same examples otherwise."""
    video, _ = collect_examples([str(two_layouts / "ravdess")])
    audio, report = collect_examples([str(two_layouts / "ravdess")], audio=True)
    assert report.duplicates_removed == 1 and len(audio) == len(video) == 9
    swapped = {e.uri for e in video} ^ {e.uri for e in audio}
    assert sorted(Path(u).name[:3] for u in swapped) == ["01-", "02-"]
    assert len({Path(u).name[3:] for u in swapped}) == 1  # the same performance
    assert {e.uri for e in audio} - {e.uri for e in video} == {
        u for u in swapped if Path(u).name.startswith("01-")}
