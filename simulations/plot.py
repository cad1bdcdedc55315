"""Figures for simulation reports, drawn with matplotlib (Agg): one function per figure.

Theory of operation
-------------------
Each function takes plain data (what `simulations.report` reads from the
metrics and the latency samples), draws one figure and writes it as a PNG:

* `shares_plot`: per bucket of posting time, the share of honest followers
  that got a post within each deadline (30 s, 120 s) and at all, with the
  scenario's fault windows shaded and labelled; for a sweep, the median
  across seeds and a band from the lowest to the highest seed;
* `latency_cdf_plot`: the empirical CDF of every delivery's latency (a step
  per sample, log time axis), one curve per run (a comparison run too);
* `hops_plot`: the histogram of DHT lookup hops;
* `spread_plot` (sweeps): one panel per metric, each seed a dot, the median
  a bar, so the spread across seeds is visible at a glance;

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never
through pyplot: no global figure registry, no interactive backend, nothing
to close.  Each is drawn inside ``matplotlib.style.context("default")`` so a
user's matplotlibrc cannot change a report, at a fixed size and dpi.  The PNG
keeps matplotlib's ``Software`` text chunk (its version, no date): the same
data and matplotlib version give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import matplotlib
import matplotlib.style
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Series colours in order: the Okabe-Ito palette, readable with colour-blindness.
PALETTE: Final = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
#: Fault windows: a light orange fill behind the data.
SHADE: Final = "#FDE2CD"
#: Fault windows' bars and labels: a dark orange.
FAULT: Final = "#A0521C"
#: The strip of fault windows along the top: each row's height (axes fraction) and at most this many.
WINDOW_ROW: Final = 0.045
MAX_WINDOW_ROWS: Final = 6
#: Inches and dots per inch: 800 x 450 pixels for one figure.
SIZE: Final = (8.0, 4.5)
DPI: Final = 100
#: A fault window: (start, end, kind); start == end is an instant (a crash): a vertical line.
Window = tuple[float, float, str]


@contextmanager
def _figure(path: Path, *, size: tuple[float, float] = SIZE) -> Iterator[Figure]:
    """A fresh figure with matplotlib's default style, saved to ``path`` as PNG on exit."""
    with matplotlib.style.context("default"):
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        yield fig
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI)


def _shade(ax: Axes, windows: Sequence[Window]) -> None:
    """Fault windows: their union shaded behind the data, and each one a labelled bar in a strip
    along the top (one row per window, so overlapping windows stay apart)."""
    for row, (start, end, kind) in enumerate(windows[:MAX_WINDOW_ROWS]):
        if end > start:
            ax.axvspan(start, end, color=SHADE, zorder=0, lw=0)
        else:
            ax.axvline(start, color=FAULT, ls=":", lw=1.2, zorder=1)
        y = 0.95 - WINDOW_ROW * row  # axes fraction
        top = ax.get_xaxis_transform()
        ax.plot([start, max(end, start)], [y, y], transform=top, color=FAULT, lw=3, solid_capstyle="butt")
        ax.plot([start], [y], transform=top, color=FAULT, marker="|", ms=7)
        ax.annotate(
            f"{kind} {start:g}-{end:g} s" if end > start else f"{kind} at {start:g} s",
            xy=(start, y),
            xycoords=top,
            xytext=(3, 2),
            textcoords="offset points",
            fontsize=7,
            color=FAULT,
        )


@contextmanager
def _shares_axes(
    path: Path, *, windows: Sequence[Window], duration: float, bucket: float, title: str
) -> Iterator[Axes]:
    """Axes for shares (0..1) by bucket of posting time, fault windows shaded, legend at the end."""
    with _figure(path) as fig:
        ax = fig.add_subplot()
        _shade(ax, windows)
        yield ax
        ax.set_xlim(0.0, duration)
        ax.set_ylim(-0.02, 1.05 + WINDOW_ROW * 1.4 * min(len(windows), MAX_WINDOW_ROWS))
        ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_xlabel(f"time posted (s; buckets of {bucket:.3g} s)")
        ax.set_ylabel("share of (post, honest follower) pairs")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:  # in the order the series were given
            order = sorted(range(len(labels)), key=lambda i: int(handles[i].get_zorder()), reverse=True)
            ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower left", fontsize=8)


def shares_plot(
    path: Path,
    series: Sequence[tuple[str, Sequence[tuple[float, Sequence[float]]]]],
    *,
    windows: Sequence[Window],
    duration: float,
    bucket: float,
    title: str,
) -> Path:
    """Shares per bucket of posting time: ``series`` is (label, [(bucket start, shares)]).

    One share per bucket (one run) is a line through the points; several (one per seed of a
    sweep) are their median as the line and a band from the lowest to the highest.  The first
    series (the strictest deadline) is drawn on top and thinnest: equal shares overlap, and
    the one that dips stays visible.  Points sit at their bucket's centre.
    """
    with _shares_axes(path, windows=windows, duration=duration, bucket=bucket, title=title) as ax:
        for order, (color, (label, rows)) in enumerate(zip(PALETTE, series, strict=False)):
            ordered = [(x + bucket / 2, sorted(v)) for x, v in rows if v]
            if not ordered:
                continue
            xs = [x for x, _ in ordered]
            text = label
            if any(len(v) > 1 for _, v in ordered):
                low, high = [v[0] for _, v in ordered], [v[-1] for _, v in ordered]
                ax.fill_between(xs, low, high, color=color, alpha=0.25, lw=0, zorder=5 - order)
                text = f"{label}: median; band: min..max over seeds"
            medians = [v[(len(v) - 1) // 2] for _, v in ordered]
            width = 1.2 + 1.2 * order
            ax.plot(xs, medians, color=color, label=text, marker="o", ms=3.5, lw=width, zorder=10 - order)
    return path


def latency_cdf_plot(path: Path, series: Sequence[tuple[str, Sequence[float]]], *, title: str) -> Path:
    """The empirical CDF of every latency sample, one step curve per run, log time axis."""
    with _figure(path) as fig:
        ax = fig.add_subplot()
        drawn = False
        for color, (label, samples) in zip(PALETTE, series, strict=False):
            xs = sorted(max(s, 1e-4) for s in samples if math.isfinite(s))
            if not xs:
                continue
            n = len(xs)
            ax.step(
                xs,
                [(i + 1) / n for i in range(n)],
                where="post",
                color=color,
                lw=1.6,
                label=f"{label} ({n:,} deliveries)",
            )
            drawn = True
        if drawn:
            ax.set_xscale("log")
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no deliveries", transform=ax.transAxes, ha="center")
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("delivery latency (s, log scale)")
        ax.set_ylabel("fraction of deliveries")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    return path


def hops_plot(path: Path, histogram: dict[str, int], *, title: str) -> Path:
    """Bars of successful lookups per hop count."""
    with _figure(path) as fig:
        ax = fig.add_subplot()
        keys = sorted(histogram, key=int)
        ax.bar([int(k) for k in keys], [histogram[k] for k in keys], color=PALETTE[0], width=0.7)
        if keys:
            ax.set_xticks([int(k) for k in keys])
        else:
            ax.text(0.5, 0.5, "no successful lookups", transform=ax.transAxes, ha="center")
        ax.set_xlabel("hops (sequential referrals)")
        ax.set_ylabel("successful lookups")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    return path


def spread_plot(
    path: Path, panels: Sequence[tuple[str, Sequence[float | None]]], *, seeds: Sequence[int], title: str
) -> Path:
    """One panel per metric: each seed's value as a dot (jittered by seed rank), the median as a bar."""
    cols = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    with _figure(path, size=(max(SIZE[0], 3.0 * cols), 2.6 * rows + 0.6)) as fig:
        fig.suptitle(title)
        axes = fig.subplots(rows, cols, squeeze=False)
        for index, ax in enumerate(axes.flat):
            if index >= len(panels):
                ax.set_visible(False)
                continue
            label, values = panels[index]
            points = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
            n = max(1, len(seeds) - 1)
            ax.scatter(
                [0.8 + 0.4 * i / n for i, _ in points],
                [v for _, v in points],
                s=14,
                color=PALETTE[0],
                alpha=0.8,
                zorder=2,
            )
            if points:
                ordered = sorted(v for _, v in points)
                median = ordered[(len(ordered) - 1) // 2]
                ax.hlines(median, 0.7, 1.3, color=PALETTE[1], lw=2, zorder=3)
            ax.set_xlim(0.5, 1.5)
            ax.set_xticks([])
            ax.set_title(label, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3, axis="y")
    return path


__all__ = [
    "DPI",
    "PALETTE",
    "SHADE",
    "SIZE",
    "hops_plot",
    "latency_cdf_plot",
    "shares_plot",
    "spread_plot",
]
