"""Stacked bar charts drawn on the server as SVG geometry (the pages' CSP allows no chart
script): one Panel of bars, a bar per column stacked by series, with its axis labels.

Colours come from the series' CSS classes in static/css/app.css, never from style
attributes. templates/_bar_chart.html draws a Panel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

WIDTH = 860
HEIGHT = 230
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 34
MAX_X_LABELS = 13
MAX_BAR_WIDTH = 48


@dataclass
class Rect:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass
class Label:
    at: float
    text: str


@dataclass
class Panel:
    title: str
    total: int
    id: str = "chart"  # unique on its page: the SVG's title element is found by it
    summary: str = ""  # what the chart says, for screen readers
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    baseline: int = HEIGHT - BOTTOM
    rects: list[Rect] = field(default_factory=list)
    y_ticks: list[Label] = field(default_factory=list)
    x_labels: list[Label] = field(default_factory=list)


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    css: str


def nice_step(largest: int, ticks: int = 4) -> int:
    """The smallest 1, 2 or 5 times a power of ten that splits `largest` into <= ticks steps."""
    if largest <= ticks:
        return 1
    raw = largest / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return int(factor * power)
    return int(10 * power)  # pragma: no cover (the loop always returns)


def stacked_panel(
    title: str,
    columns: Sequence[tuple[str, Mapping[str, int]]],
    series: Sequence[Series],
    describe: Callable[[int, Series, int], str],
    *,
    id: str = "chart",
    summary: str = "",
) -> Panel:
    """A bar per column (its label, and a count per series key), stacked in series order;
    describe(column index, series, count) is each piece's tooltip."""
    totals = [sum(counts.get(s.key, 0) for s in series) for _, counts in columns]
    panel = Panel(title=title, total=sum(totals), id=id, summary=summary)
    step = nice_step(max(totals, default=0))
    top_value = max(step, step * math.ceil(max(totals, default=0) / step))
    scale = (panel.baseline - panel.top) / top_value
    for value in range(0, top_value + 1, step):
        panel.y_ticks.append(Label(round(panel.baseline - value * scale, 1), f"{value:,}"))
    slot = (panel.right - panel.left) / max(len(columns), 1)
    bar = min(slot * 0.7, MAX_BAR_WIDTH)
    every = math.ceil(len(columns) / MAX_X_LABELS)
    for n, (label, counts) in enumerate(columns):
        x = panel.left + n * slot
        if n % every == 0:
            panel.x_labels.append(Label(round(x + slot / 2, 1), label))
        y = float(panel.baseline)
        for one in series:
            count = counts.get(one.key, 0)
            if not count:
                continue
            height = count * scale
            y -= height
            panel.rects.append(
                Rect(
                    x=round(x + (slot - bar) / 2, 1),
                    y=round(y, 1),
                    width=round(bar, 1),
                    height=round(height, 1),
                    css=one.css,
                    title=describe(n, one, count),
                )
            )
    return panel
