"""Charts of the batch outputs, drawn with matplotlib's object API (no pyplot: its global state
is not safe in the flow's task threads) and returned as self-contained SVG text or PNG bytes.

SVG keeps text as drawn paths (``svg.fonttype = "path"``), so a page that inlines it needs no
font, script or image from anywhere else, and prints sharp.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from emotion_model.labels import EMOTION_LABELS

__all__ = [
    "LABEL_COLORS",
    "axes",
    "confidence_histogram",
    "figure",
    "label_bars",
    "label_mix_bars",
    "to_png",
    "to_svg",
]

LABEL_COLORS: dict[str, str] = {
    "angry": "#D55E00",
    "disgust": "#009E73",
    "fearful": "#CC79A7",
    "happy": "#E69F00",
    "neutral": "#8C8C8C",
    "sad": "#0072B2",
}
"""One colour per emotion (Okabe-Ito: told apart with the common colour-vision deficiencies)."""

_SVG = {
    "svg.fonttype": "path",
    "svg.hashsalt": "emotion-pipeline",  # the same chart gives the same SVG ids
}


def figure(width: float, height: float) -> Figure:
    """A new figure (inches); not registered with pyplot."""
    return Figure(figsize=(width, height), layout="constrained")


def axes(fig: Figure, *args: Any, **kwargs: Any) -> Any:
    """``fig.add_subplot(...)`` in the house style: no top and right frame lines."""
    ax = fig.add_subplot(*args, **kwargs)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    return ax


def to_svg(fig: Figure) -> str:
    """The figure as inline SVG (no XML prolog, no external references)."""
    buf = io.StringIO()
    with matplotlib.rc_context(_SVG):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def label_bars(counts: Mapping[str, int], *, title: str) -> Figure:
    """Horizontal bars: videos per label, in `EMOTION_LABELS` order, with their counts."""
    fig = figure(4.6, 2.4)
    ax = axes(fig)
    total = sum(counts.values())
    if not total:
        _empty(ax, "no labelled videos")
    else:
        values = [int(counts.get(label, 0)) for label in EMOTION_LABELS]
        bars = ax.barh(list(EMOTION_LABELS), values,
                       color=[LABEL_COLORS[label] for label in EMOTION_LABELS])
        ax.bar_label(bars, labels=[f"{v} ({v / total:.0%})" for v in values], padding=2)
        ax.invert_yaxis()
        ax.set_xlabel("videos")
        ax.set_xlim(0, max(values) * 1.3)
    ax.set_title(title, loc="left")
    return fig


def confidence_histogram(
    confidences: Sequence[float], labels: Sequence[str], *, title: str, bins: int = 20
) -> Figure:
    """Stacked histogram of confidences in [0, 1], one colour per predicted label."""
    fig = figure(4.6, 2.4)
    ax = axes(fig)
    if not len(confidences):
        _empty(ax, "no labelled videos")
    else:
        present = [label for label in EMOTION_LABELS if label in set(labels)]
        series = [[c for c, lab in zip(confidences, labels, strict=True) if lab == label]
                  for label in present]
        ax.hist(series, bins=bins, range=(0.0, 1.0), stacked=True, label=present,
                color=[LABEL_COLORS[label] for label in present])
        ax.axvline(1 / len(EMOTION_LABELS), color="#444", lw=0.8, ls=":")
        ax.set_xlim(0, 1)
        ax.set_xlabel("confidence (dotted: chance, 1/6)")
        ax.set_ylabel("videos")
        ax.legend(fontsize=7, frameon=False, ncols=3, loc="upper left")
    ax.set_title(title, loc="left")
    return fig


def label_mix_bars(runs: Sequence[tuple[str, Mapping[str, int]]], *, title: str) -> Figure:
    """One stacked bar per run (oldest at the top, the last one is this run): each label's
    share of the run's labelled videos."""
    fig = figure(7.0, 0.9 + 0.32 * max(len(runs), 1))
    ax = axes(fig)
    runs = [(name, mix) for name, mix in runs if sum(mix.values())]
    if not runs:
        _empty(ax, "no labelled videos in this run or the runs before it")
        ax.set_title(title, loc="left")
        return fig
    names = [name for name, _ in runs]
    left = [0.0] * len(runs)
    for label in EMOTION_LABELS:
        shares = [mix.get(label, 0) / sum(mix.values()) for _, mix in runs]
        ax.barh(names, shares, left=left, color=LABEL_COLORS[label], label=label, height=0.7)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of labelled videos")
    ax.legend(fontsize=7, frameon=False, ncols=6, loc="lower left", bbox_to_anchor=(0, 1.0))
    ax.set_title(title, loc="left", pad=18)
    return fig
