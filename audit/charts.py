"""The audit reports' chart: opt-outs and re-enrolments per week, stacked by source."""

from __future__ import annotations

from audit.models import Source
from audit.reports import CHART_ACTIONS, WeekCounts
from lib.charts import Panel, Series, stacked_panel


def source_class(source: str) -> str:
    return "src-" + source.replace("_", "-")


def _series() -> list[Series]:
    return [Series(source, label, source_class(source)) for source, label in Source.choices]


def weekly_panels(weeks: list[WeekCounts]) -> list[Panel]:
    """One panel per action, a bar per week stacked by source."""
    panels = []
    for number, (action, title) in enumerate(CHART_ACTIONS, 1):
        columns = [(f"{week.week:%-d %b}", week.counts[action]) for week in weeks]

        def describe(index: int, series: Series, count: int, title: str = title) -> str:
            return (
                f"Week of {weeks[index].week:%-d %b %Y}: {count:,} {title.lower()} "
                f"from {series.label}"
            )

        panel = stacked_panel(title, columns, _series(), describe, id=f"chart-{number}")
        panel.summary = f"{title} per week: {panel.total} in all"
        panels.append(panel)
    return panels


def legend() -> list[tuple[str, str]]:
    return [(one.css, one.label) for one in _series()]
