"""Bar charts drawn on the server as SVG geometry (the page's CSP allows no chart script).

Colours come from classes in static/css/app.css, never from style attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from audit.models import Source
from audit.reports import CHART_ACTIONS, WeekCounts

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
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    baseline: int = HEIGHT - BOTTOM
    rects: list[Rect] = field(default_factory=list)
    y_ticks: list[Label] = field(default_factory=list)
    x_labels: list[Label] = field(default_factory=list)


def source_class(source: str) -> str:
    return "src-" + source.replace("_", "-")


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


def weekly_panels(weeks: list[WeekCounts]) -> list[Panel]:
    """One panel per action, a bar per week stacked by source."""
    panels = []
    for action, title in CHART_ACTIONS:
        totals = [week.total(action) for week in weeks]
        panel = Panel(title=title, total=sum(totals))
        step = nice_step(max(totals, default=0))
        top_value = max(step, step * math.ceil(max(totals, default=0) / step))
        plot_height = panel.baseline - panel.top
        scale = plot_height / top_value
        for value in range(0, top_value + 1, step):
            panel.y_ticks.append(Label(round(panel.baseline - value * scale, 1), f"{value:,}"))
        slot = (panel.right - panel.left) / max(len(weeks), 1)
        bar = min(slot * 0.7, MAX_BAR_WIDTH)
        every = math.ceil(len(weeks) / MAX_X_LABELS)
        for n, week in enumerate(weeks):
            x = panel.left + n * slot
            if n % every == 0:
                panel.x_labels.append(Label(round(x + slot / 2, 1), f"{week.week:%-d %b}"))
            y = float(panel.baseline)
            for source, label in Source.choices:
                count = week.counts[action][source]
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
                        css=source_class(source),
                        title=f"Week of {week.week:%-d %b %Y}: {count:,} {title.lower()} "
                        f"from {label}",
                    )
                )
        panels.append(panel)
    return panels


def legend() -> list[tuple[str, str]]:
    return [(source_class(source), label) for source, label in Source.choices]
