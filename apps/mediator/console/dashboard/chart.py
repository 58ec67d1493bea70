"""Per-minute counts as the geometry of a stacked bar chart, drawn as SVG by a template.

Server-side SVG needs no JavaScript library and no network; the browser scales it.
Each bar has a <title> (the hover tooltip) listing its counts.
"""

import math
from dataclasses import dataclass, field

from apps.mediator.console.dashboard.stats import OUTCOMES, Minute
from apps.mediator.console.style import STATUS_COLOURS

WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 22, 10, 26  # margins for the axis labels


@dataclass
class Segment:
    status: str
    count: int
    y: float
    height: float

    @property
    def colour(self) -> str:
        return STATUS_COLOURS.get(self.status, "#000")


@dataclass
class Bar:
    x: float
    width: float
    title: str
    total: int
    segments: list[Segment] = field(default_factory=list)


@dataclass
class Chart:
    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_bottom: float
    bars: list[Bar]
    gridlines: list[tuple[float, int]]  # (y, value)
    xlabels: list[tuple[float, str]]  # (x, label)
    legend: list[tuple[str, str, int]]  # (status, colour, total over the window)
    peak: int

    @property
    def empty(self) -> bool:
        return self.peak == 0


def axis(peak: int, *, max_intervals: int = 5) -> tuple[int, int]:
    """(top, step) of a readable y axis: step is 1, 2 or 5 x 10^n, at most `max_intervals` steps reach the peak."""
    magnitude = 1
    while True:
        for step in (magnitude, 2 * magnitude, 5 * magnitude):
            intervals = max(math.ceil(peak / step), 1)
            if intervals <= max_intervals:
                return intervals * step, step
        magnitude *= 10


def stacked_bars(minutes: list[Minute], *, width: int = WIDTH, height: int = HEIGHT) -> Chart:
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    peak = max((m.total for m in minutes), default=0)
    top, step = axis(peak)
    slot = plot_w / max(len(minutes), 1)
    bars = []
    for i, minute in enumerate(minutes):
        x = LEFT + i * slot
        parts = [f"{s}: {minute.counts.get(s, 0)}" for s in OUTCOMES if minute.counts.get(s, 0)]
        label = f"{minute.start:%H:%M} UTC, {minute.total} messages" + (f" ({', '.join(parts)})" if parts else "")
        bar = Bar(x=round(x + slot * 0.1, 2), width=round(slot * 0.8, 2), title=label, total=minute.total)
        base = TOP + plot_h
        for status in OUTCOMES:
            count = minute.counts.get(status, 0)
            if not count:
                continue
            h = plot_h * count / top
            base -= h
            bar.segments.append(Segment(status, count, round(base, 2), round(h, 2)))
        bars.append(bar)
    gridlines = [(round(TOP + plot_h - plot_h * v / top, 2), v) for v in range(0, top + 1, step)]
    xlabels = []
    for i, minute in enumerate(minutes):
        if i % 10 == 0 or i == len(minutes) - 1:
            xlabels.append((round(LEFT + i * slot + slot / 2, 2), f"{minute.start:%H:%M}"))
    legend = [(s, STATUS_COLOURS.get(s, "#000"), sum(m.counts.get(s, 0) for m in minutes)) for s in OUTCOMES]
    return Chart(width, height, LEFT, width - RIGHT, TOP + plot_h, bars, gridlines, xlabels, legend, peak)
