"""Dependency-free PNG plots for simulation reports: line plots and bar charts.

Theory of operation
-------------------
A `Canvas` is an RGB raster in one ``bytearray`` with three drawing
primitives: `Canvas.fill` (a clipped rectangle), `Canvas.line` (Bresenham,
with a square pen) and `Canvas.text` (a built-in 5x7 bitmap font, optionally
scaled and rotated to read bottom to top).  `Canvas.png` encodes it as an
8-bit truecolour PNG (PNG spec, 2nd ed., sections 5 and 11): the signature,
IHDR, one IDAT holding the zlib stream of every row behind filter byte 0, and
IEND.  There is no time or text chunk and everything is integer arithmetic on
the inputs, so the same input gives the same bytes (with one zlib build).

`line_plot` and `bar_plot` lay out a `_Frame`: a title on top, the y label
rotated at the left, ticks on "nice" steps (1, 2 or 5 x 10^k, `_ticks`) with
light grid lines, and a data-to-pixel mapping.  Shaded x-ranges (fault
windows) are painted first, so grid and data stay visible over them.  The
simulator avoids matplotlib on purpose: reports must build wherever the
simulator runs, with nothing beyond the standard library.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Color = tuple[int, int, int]
Point = tuple[float, float]
#: A tick's position and its label.
Tick = tuple[float, str]

WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (110, 110, 110)
GRID: Color = (228, 228, 228)
SHADE: Color = (253, 226, 205)
#: Series colours in order: the Okabe-Ito palette, readable with colour-blindness.
PALETTE: tuple[Color, ...] = (
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
)
WIDTH, HEIGHT = 720, 440
#: Margins around the plot area (pixels) and the inset of the data range inside it.
LEFT, RIGHT, TOP, BOTTOM, PAD = 78, 24, 44, 56, 8

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: 5x7 glyphs: five column bytes in hex, bit 0 the top row (the classic HD44780-style LCD font).
#: Characters outside the table are drawn as "?".
_FONT: dict[str, str] = {
    " ": "0000000000", "%": "2313086462", "(": "001c224100", ")": "0041221c00", "+": "08083e0808",
    ",": "0050300000", "-": "0808080808", ".": "0060600000", "/": "2010080402", ":": "0036360000",
    "<": "0008142241", "=": "1414141414", ">": "4122140800", "?": "0201510906", "_": "4040404040",
    "0": "3e5149453e", "1": "00427f4000", "2": "4261514946", "3": "2141454b31", "4": "1814127f10",
    "5": "2745454539", "6": "3c4a494930", "7": "0171090503", "8": "3649494936", "9": "064949291e",
    "A": "7e1111117e", "B": "7f49494936", "C": "3e41414122", "D": "7f4141221c", "E": "7f49494941",
    "F": "7f09090101", "G": "3e41415132", "H": "7f0808087f", "I": "00417f4100", "J": "2040413f01",
    "K": "7f08142241", "L": "7f40404040", "M": "7f0204027f", "N": "7f0408107f", "O": "3e4141413e",
    "P": "7f09090906", "Q": "3e4151215e", "R": "7f09192946", "S": "4649494931", "T": "01017f0101",
    "U": "3f4040403f", "V": "1f2040201f", "W": "7f2018207f", "X": "6314081463", "Y": "0304780403",
    "Z": "6151494543", "a": "2054545478", "b": "7f48444438", "c": "3844444420", "d": "384444487f",
    "e": "3854545418", "f": "087e090102", "g": "081454543c", "h": "7f08040478", "i": "00447d4000",
    "j": "2040443d00", "k": "007f102844", "l": "00417f4000", "m": "7c04180478", "n": "7c08040478",
    "o": "3844444438", "p": "7c14141408", "q": "081414187c", "r": "7c08040408", "s": "4854545420",
    "t": "043f444020", "u": "3c4040207c", "v": "1c2040201c", "w": "3c4030403c", "x": "4428102844",
    "y": "0c5050503c", "z": "4464544c44",
}  # fmt: skip


def text_width(text: str, scale: int = 1) -> int:
    """Pixels `Canvas.text` needs for ``text`` (glyphs are 5 wide plus 1 of spacing)."""
    return max(0, len(text) * 6 * scale - scale)


class Canvas:
    """An RGB raster with clipped rectangles, lines and bitmap text; `png` encodes it."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))
        #: Drawing is limited to [x0, x1) x [y0, y1).
        self.clip = (0, 0, width, height)

    def fill(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Paint the rectangle [x0, x1) x [y0, y1), clipped."""
        cx0, cy0, cx1, cy1 = self.clip
        x0, x1 = max(x0, cx0), min(x1, cx1)
        if x0 >= x1:
            return
        run = bytes(color) * (x1 - x0)
        for y in range(max(y0, cy0), min(y1, cy1)):
            start = (y * self.width + x0) * 3
            self.pixels[start : start + len(run)] = run

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 1) -> None:
        """A straight line (Bresenham), drawn with a ``width`` x ``width`` square pen."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        half = width // 2
        while True:
            self.fill(x0 - half, y0 - half, x0 - half + width, y0 - half + width, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(
        self,
        x: int,
        y: int,
        text: str,
        color: Color = BLACK,
        *,
        scale: int = 1,
        align: str = "left",
        vertical: bool = False,
    ) -> None:
        """Draw ``text`` from (x, y), its top-left corner; ``align`` ("left", "center", "right")
        shifts it along its line.  ``vertical`` text reads bottom to top from (x, y)."""
        shift = {"left": 0, "center": text_width(text, scale) // 2, "right": text_width(text, scale)}[align]
        for i, char in enumerate(text):
            for col, bits in enumerate(bytes.fromhex(_FONT.get(char, _FONT["?"]))):
                for row in range(7):
                    if not bits >> row & 1:
                        continue
                    along, across = i * 6 * scale + col * scale - shift, row * scale
                    if vertical:
                        px, py = x + across, y - along - scale
                    else:
                        px, py = x + along, y + across
                    self.fill(px, py, px + scale, py + scale, color)

    def png(self) -> bytes:
        stride = self.width * 3
        rows = b"".join(
            b"\x00" + self.pixels[y * stride : (y + 1) * stride] for y in range(self.height)
        )  # filter type 0 (None) on every row
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return (
            PNG_SIGNATURE
            + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows, 9))
            + _chunk(b"IEND", b"")
        )

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.write_bytes(self.png())
        return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _ticks(lo: float, hi: float, count: int = 5) -> tuple[float, float, list[Tick]]:
    """Widen [lo, hi] to whole multiples of a 1, 2 or 5 x 10^k step making about ``count`` intervals."""
    if not hi > lo:  # one value (or none): give it some room, never below 0 for non-negative data
        span = abs(lo) / 2 or 1.0
        lo, hi = (max(0.0, lo - span) if lo >= 0 else lo - span), hi + span
    raw = (hi - lo) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return (
        first * step,
        last * step,
        [(i * step, _tick_label(i * step, step)) for i in range(first, last + 1)],
    )


def _decade_ticks(lo: float, hi: float) -> tuple[float, float, list[Tick]]:
    """For a log axis: [lo, hi] are log10 values, widened to whole decades, one tick per decade."""
    first, last = math.floor(lo), math.ceil(hi)
    last = max(last, first + 1)
    return float(first), float(last), [(float(e), f"{10.0**e:g}") for e in range(first, last + 1)]


def _tick_label(value: float, step: float) -> str:
    """A tick value with as many decimals as its step needs; k and M for large steps."""
    if abs(value) < step / 2:
        value = 0.0  # no "-0.0"
    if step >= 1e6:
        return f"{value / 1e6:g}M"
    if step >= 1e3:
        return f"{value / 1e3:g}k"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


@dataclass
class _Frame:
    """The plot area (pixels) and the data ranges mapped onto it (log10 of x on a log axis)."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    left: int = LEFT
    top: int = TOP
    right: int = WIDTH - RIGHT
    bottom: int = HEIGHT - BOTTOM

    @classmethod
    def layout(
        cls, x_range: tuple[float, float] | None, y_range: tuple[float, float], *, xlog: bool = False
    ) -> _Frame:
        """Ticked ranges; ``x_range`` None: x runs over [0, 1] without ticks (bar slots)."""
        y_lo, y_hi, y_ticks = _ticks(*y_range)
        if x_range is None:
            return cls(0.0, 1.0, y_lo, y_hi, [], y_ticks)
        x_lo, x_hi, x_ticks = (_decade_ticks if xlog else _ticks)(*x_range)
        return cls(x_lo, x_hi, y_lo, y_hi, x_ticks, y_ticks)

    def px(self, x: float) -> int:
        span = self.right - self.left - 2 * PAD
        return round(self.left + PAD + (x - self.x_lo) / (self.x_hi - self.x_lo) * span)

    def py(self, y: float) -> int:
        span = self.bottom - self.top - 2 * PAD
        return round(self.bottom - PAD - (y - self.y_lo) / (self.y_hi - self.y_lo) * span)

    def draw(self, canvas: Canvas, title: str, xlabel: str, ylabel: str) -> None:
        """Title, grid, box, tick labels and axis labels."""
        canvas.text(WIDTH // 2, 12, title, scale=2, align="center")
        for y, label in self.y_ticks:
            py = self.py(y)
            canvas.fill(self.left + 1, py, self.right, py + 1, GRID)
            canvas.text(self.left - 6, py - 3, label, GREY, align="right")
        for x, label in self.x_ticks:
            px = self.px(x)
            canvas.fill(px, self.top + 1, px + 1, self.bottom, GRID)
            canvas.text(px, self.bottom + 6, label, GREY, align="center")
        for x0, y0, x1, y1 in (
            (self.left, self.top, self.right + 1, self.top + 1),
            (self.left, self.bottom, self.right + 1, self.bottom + 1),
            (self.left, self.top, self.left + 1, self.bottom + 1),
            (self.right, self.top, self.right + 1, self.bottom + 1),
        ):
            canvas.fill(x0, y0, x1, y1, BLACK)
        canvas.text((self.left + self.right) // 2, HEIGHT - 24, xlabel, align="center")
        canvas.text(16, (self.top + self.bottom) // 2, ylabel, align="center", vertical=True)

    def clip_to(self, canvas: Canvas) -> None:
        canvas.clip = (self.left + 1, self.top + 1, self.right, self.bottom)


def _extent(values: Sequence[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    return (min(values), max(values)) if values else (0.0, 1.0)


def line_plot(
    path: Path | str,
    series: Sequence[tuple[str, Sequence[Point]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    shaded: Sequence[tuple[float, float, str]] = (),
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    xlog: bool = False,
) -> Path:
    """Write a PNG with one line (and point markers) per ``(label, points)`` series.

    ``shaded`` bands ``(x0, x1, label)`` are painted behind the data (at least
    3 pixels wide, so instants show) and labelled above the plot.  Ranges
    follow the data unless ``xlim`` / ``ylim`` fix them.  ``xlog``: a
    logarithmic x axis with a tick per decade (for latency tails).  Points
    that cannot be drawn (not finite; x <= 0 on a log axis) are dropped.  A
    legend appears when there is more than one series.
    """

    def fx(x: float) -> float | None:
        if not math.isfinite(x) or (xlog and x <= 0):
            return None
        return math.log10(x) if xlog else x

    clean: list[tuple[str, list[Point]]] = []
    for label, points in series:
        kept = [(fx(x), y) for x, y in points if math.isfinite(y)]
        clean.append((label, [(x, y) for x, y in kept if x is not None]))
    bands = [
        (a, b, label) for x0, x1, label in shaded if (a := fx(x0)) is not None and (b := fx(x1)) is not None
    ]
    xs = [x for _, points in clean for x, _ in points] + [v for a, b, _ in bands for v in (a, b)]
    ys = [y for _, points in clean for _, y in points]
    fixed = None
    if xlim is not None and (lo := fx(xlim[0])) is not None and (hi := fx(xlim[1])) is not None:
        fixed = (lo, hi)
    x_range = _extent(xs, fixed)
    frame = _Frame.layout(x_range, _extent(ys, ylim), xlog=xlog)
    canvas = Canvas(WIDTH, HEIGHT)
    frame.clip_to(canvas)
    for x0, x1, _ in bands:
        left, right = frame.px(x0), frame.px(x1)
        if right - left < 3:
            left, right = (left + right) // 2 - 1, (left + right) // 2 + 2
        canvas.fill(left, frame.top + 1, right, frame.bottom, SHADE)
    canvas.clip = (0, 0, WIDTH, HEIGHT)
    for x0, _, label in bands:
        canvas.text(max(frame.left, frame.px(x0)), frame.top - 10, label, GREY)
    frame.draw(canvas, title, xlabel, ylabel)
    frame.clip_to(canvas)
    for (_, points), color in zip(clean, _colors(len(clean)), strict=True):
        pixels = [(frame.px(x), frame.py(y)) for x, y in points]
        for (ax, ay), (bx, by) in itertools.pairwise(pixels):
            canvas.line(ax, ay, bx, by, color, width=2)
        for px, py in pixels:
            canvas.fill(px - 2, py - 2, px + 3, py + 3, color)
    canvas.clip = (0, 0, WIDTH, HEIGHT)
    if len(clean) > 1:
        _legend(canvas, frame, [label for label, _ in clean])
    return canvas.save(path)


def bar_plot(
    path: Path | str, bars: Sequence[tuple[str, float]], *, title: str, xlabel: str, ylabel: str
) -> Path:
    """Write a PNG bar chart, one bar per ``(label, value)``, from a y axis that starts at 0."""
    values = [v if math.isfinite(v) else 0.0 for _, v in bars]
    top = max([0.0, *values])
    frame = _Frame.layout(None, (min([0.0, *values]), top or 1.0))
    canvas = Canvas(WIDTH, HEIGHT)
    frame.draw(canvas, title, xlabel, ylabel)
    if not bars:
        canvas.text(
            (frame.left + frame.right) // 2, (frame.top + frame.bottom) // 2, "no data", GREY, align="center"
        )
    slot = (frame.right - frame.left - 2 * PAD) / max(1, len(bars))
    for i, ((label, _), value) in enumerate(zip(bars, values, strict=True)):
        center = frame.px((i + 0.5) / len(bars))
        half = max(1, round(slot * 0.35))
        y0, y1 = sorted((frame.py(0.0), frame.py(value)))
        frame.clip_to(canvas)
        canvas.fill(center - half, y0, center + half, max(y1, y0 + 1), PALETTE[0])
        canvas.clip = (0, 0, WIDTH, HEIGHT)
        if text_width(label) < slot:
            canvas.text(center, frame.bottom + 6, label, GREY, align="center")
        shown = f"{value:g}"
        if text_width(shown) < slot:
            canvas.text(center, frame.py(value) - 10, shown, align="center")
    return canvas.save(path)


def _colors(count: int) -> list[Color]:
    return [PALETTE[i % len(PALETTE)] for i in range(count)]


def _legend(canvas: Canvas, frame: _Frame, labels: Sequence[str]) -> None:
    """Labels with colour swatches, in the lower right corner of the plot area."""
    width = max(text_width(label) for label in labels) + 30
    x = frame.right - width - 8
    y = frame.bottom - 8 - 14 * len(labels)
    canvas.fill(x - 6, y - 6, frame.right - 8, frame.bottom - 8, WHITE)
    for label, color in zip(labels, _colors(len(labels)), strict=True):
        canvas.fill(x, y + 2, x + 20, y + 5, color)
        canvas.text(x + 26, y, label)
        y += 14
