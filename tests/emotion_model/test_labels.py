"""Label parsers on real dataset names, on the real clips, and on names that do not fit."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from emotion_model.labels import EMOTION_LABELS, parse_crema_d, parse_name, parse_ravdess


def test_emotion_labels_order() -> None:
    assert EMOTION_LABELS == ("angry", "disgust", "fearful", "happy", "neutral", "sad")


@pytest.mark.parametrize(
    ("code", "label"),
    [("01", "neutral"), ("03", "happy"), ("04", "sad"), ("05", "angry"), ("06", "fearful"),
     ("07", "disgust")],
)
def test_ravdess_six_classes(code: str, label: str) -> None:
    parsed = parse_ravdess(f"01-02-{code}-01-02-01-12.mp4")
    assert parsed is not None
    assert (parsed.label, parsed.actor, parsed.dataset) == (label, "12", "ravdess")
    assert parsed.in_classes


def test_ravdess_angry_example() -> None:
    parsed = parse_ravdess("01-02-05-01-02-01-12.mp4")
    assert parsed is not None
    assert (parsed.label, parsed.actor, parsed.dataset) == ("angry", "12", "ravdess")


@pytest.mark.parametrize(
    "name",
    [
        "Actor_12/01-01-03-02-01-01-12.mp4",
        "s3://archive/ravdess/Actor_12/01-01-03-02-01-01-12.mp4",
        "C:\\data\\Actor_12\\01-01-03-02-01-01-12.mp4",
        Path("Actor_12/01-01-03-02-01-01-12.mp4"),
        PurePosixPath("/data/Actor_12/01-01-03-02-01-01-12.mp4"),
        "01-01-03-02-01-01-12",  # no suffix
    ],
)
def test_ravdess_paths(name: object) -> None:
    parsed = parse_ravdess(name)
    assert parsed is not None
    assert (parsed.label, parsed.actor) == ("happy", "12")


@pytest.mark.parametrize(("code", "label"), [("02", "calm"), ("08", "surprised")])
def test_ravdess_outside_the_six_classes(code: str, label: str) -> None:
    parsed = parse_ravdess(f"01-01-{code}-02-01-01-19.mp4")
    assert parsed is not None
    assert parsed.label == label
    assert parsed.actor == "19"
    assert not parsed.in_classes


def test_ravdess_modalities_share_a_performance() -> None:
    av_copy = parse_ravdess("01-01-05-01-02-01-12.mp4")
    video_only = parse_ravdess("02-01-05-01-02-01-12.mp4")
    other = parse_ravdess("02-01-05-01-02-02-12.mp4")
    assert av_copy is not None and video_only is not None and other is not None
    assert av_copy.performance == video_only.performance
    assert other.performance != av_copy.performance


@pytest.mark.parametrize(
    ("code", "label"),
    [("ANG", "angry"), ("DIS", "disgust"), ("FEA", "fearful"), ("HAP", "happy"),
     ("NEU", "neutral"), ("SAD", "sad")],
)
def test_crema_d_all_six_codes(code: str, label: str) -> None:
    parsed = parse_crema_d(f"1001_DFA_{code}_XX.flv")
    assert parsed is not None
    assert (parsed.label, parsed.actor, parsed.dataset) == (label, "1001", "crema-d")
    assert parsed.in_classes


@pytest.mark.parametrize(
    "name",
    ["1001_DFA_ANG_XX.flv", "VideoFlash/1001_DFA_ANG_XX.flv", "1001_DFA_ANG_XX.mp4",
     "1001_DFA_ANG_XX"],
)
def test_crema_d_angry_example(name: str) -> None:
    parsed = parse_crema_d(name)
    assert parsed is not None
    assert (parsed.label, parsed.actor, parsed.dataset) == ("angry", "1001", "crema-d")


def test_crema_d_levels() -> None:
    for level in ("LO", "MD", "HI", "XX"):
        parsed = parse_crema_d(f"1091_IEO_SAD_{level}.flv")
        assert parsed is not None
        assert (parsed.label, parsed.actor) == ("sad", "1091")


ODD_NAMES = [
    None,
    "",
    42,
    4.2,
    b"01-02-05-01-02-01-12.mp4",
    ["01-02-05-01-02-01-12.mp4"],
    object(),
    "foo.mp4",
    ".mp4",
    "/",
    "Actor_12/",
    "01-02-05-01-02-01.mp4",  # six fields
    "01-02-05-01-02-01-12-03.mp4",  # eight fields
    "01-02-0a-01-02-01-12.mp4",  # non-digit
    "1-2-5-1-2-1-12.mp4",  # one-digit fields
    "01-02-09-01-02-01-12.mp4",  # unknown emotion code
    "01-02-00-01-02-01-12.mp4",
    "01_02_05_01_02_01_12.mp4",
    "1001_DFA_XYZ_XX.flv",  # unknown emotion code
    "1001_DFA_ANG.flv",  # three fields
    "1001_DFA_ANG_XX_YY.flv",  # five fields
    "10A1_DFA_ANG_XX.flv",  # non-digit actor
    "101_DFA_ANG_XX.flv",  # three-digit actor
    "1001-DFA-ANG-XX.flv",
    "０１-０２-０５-０１-０２-０１-１２.mp4",  # full-width digits
    "١٠٠١_DFA_ANG_XX.flv",  # Arabic-Indic digits
    "1001_DFA_ÄNG_XX.flv",
    "émotion-😀.mp4",
    "\x00\n\t",
    "01-02-05-01-02-01-12\n",  # a trailing newline is not part of a dataset name
    "1001_DFA_ANG_XX\n",
    "01-02-05-01-02-01-12-" * 100 + ".mp4",
    "x" * 100_000,
]


@pytest.mark.parametrize("name", ODD_NAMES, ids=lambda n: repr(n)[:40])
def test_odd_names_give_none(name: object) -> None:
    assert parse_ravdess(name) is None
    assert parse_crema_d(name) is None
    assert parse_name(name) is None


def test_each_parser_refuses_the_other_convention() -> None:
    assert parse_ravdess("1001_DFA_ANG_XX.flv") is None
    assert parse_crema_d("01-02-05-01-02-01-12.mp4") is None
    ravdess = parse_name("01-02-05-01-02-01-12.mp4")
    crema = parse_name("1001_DFA_ANG_XX.flv")
    assert ravdess is not None and ravdess.dataset == "ravdess"
    assert crema is not None and crema.dataset == "crema-d"


@pytest.mark.parametrize(
    ("name", "label", "actor", "dataset", "in_classes"),
    [
        ("1001_DFA_ANG_XX.flv", "angry", "1001", "crema-d", True),
        ("1001_DFA_HAP_XX.flv", "happy", "1001", "crema-d", True),
        ("1001_DFA_NEU_XX.flv", "neutral", "1001", "crema-d", True),
        ("1001_DFA_SAD_XX.flv", "sad", "1001", "crema-d", True),
    ],
)
def test_real_files_parse_to_their_documented_labels(
    crema_d_dir: Path, name: str, label: str, actor: str, dataset: str, in_classes: bool
) -> None:
    path = crema_d_dir / name
    assert path.is_file()
    parsed = parse_name(path)
    assert parsed is not None
    assert (parsed.label, parsed.actor, parsed.dataset, parsed.in_classes) == (
        label, actor, dataset, in_classes
    )


def test_ravdess_shaped_file_parses_as_surprised(ravdess_like_clip: Path) -> None:
    parsed = parse_name(ravdess_like_clip)
    assert parsed is not None
    assert (parsed.label, parsed.actor, parsed.dataset, parsed.in_classes) == (
        "surprised", "19", "ravdess", False
    )


def test_every_real_file_parses(crema_d_dir: Path) -> None:
    videos = sorted(p for p in crema_d_dir.rglob("*") if p.suffix in {".flv", ".mp4"})
    assert [p.name for p in videos] == ["1001_DFA_ANG_XX.flv", "1001_DFA_HAP_XX.flv",
                                        "1001_DFA_NEU_XX.flv", "1001_DFA_SAD_XX.flv"]
    assert all(parse_name(p) is not None for p in videos)
