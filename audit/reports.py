"""The Records team's weekly change report and the opt-out / re-enrolment counts per week."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncWeek
from django.utils import timezone

from audit.forms import day_start
from audit.models import AuditAction, AuditEntry, Source
from lib.channels import SALESFORCE_FIELDS, Channel

# Only these actions move an opt-out flag (apply_change names a change by what it did).
FLAG_ACTIONS = [AuditAction.OPT_OUT, AuditAction.RE_ENROLMENT]
# How the Records team names the two moves of a flag (Salesforce checkbox values).
OPTED_OUT = "FALSE->TRUE"
OPTED_IN = "TRUE->FALSE"
DIRECTIONS = [(OPTED_OUT, "Opted out"), (OPTED_IN, "Opted back in")]
CHART_ACTIONS = [(AuditAction.OPT_OUT, "Opt-outs"), (AuditAction.RE_ENROLMENT, "Re-enrolments")]


def _moved(channel: str, direction: str) -> Q:
    was, now = (False, True) if direction == OPTED_OUT else (True, False)
    return Q(**{f"before__opted_out__{channel}": was, f"after__opted_out__{channel}": now})


def _in_range(start: date, end: date) -> Q:
    return Q(created_at__gte=day_start(start), created_at__lt=day_start(end + timedelta(days=1)))


def flag_changes(start: date, end: date) -> QuerySet[AuditEntry]:
    """Entries in [start, end] (whole local days) that moved an opt-out flag on any channel."""
    moved = Q()
    for channel in Channel.values:
        for direction, _ in DIRECTIONS:
            moved |= _moved(channel, direction)
    return AuditEntry.objects.filter(
        _in_range(start, end), moved, action__in=FLAG_ACTIONS, contact__isnull=False
    )


@dataclass
class SummaryRow:
    channel: str
    label: str
    field: str
    opted_out: int
    opted_in: int


def change_summary(start: date, end: date) -> list[SummaryRow]:
    """Per channel: how many flags went FALSE->TRUE and TRUE->FALSE (one query)."""
    counts = AuditEntry.objects.filter(
        _in_range(start, end), action__in=FLAG_ACTIONS, contact__isnull=False
    ).aggregate(
        **{
            f"{channel}|{direction}": Count("id", filter=_moved(channel, direction))
            for channel in Channel.values
            for direction, _ in DIRECTIONS
        }
    )
    return [
        SummaryRow(
            channel=channel,
            label=label,
            field=SALESFORCE_FIELDS[channel],
            opted_out=counts[f"{channel}|{OPTED_OUT}"],
            opted_in=counts[f"{channel}|{OPTED_IN}"],
        )
        for channel, label in Channel.choices
    ]


@dataclass
class ChangeRow:
    channel: str
    direction: str
    entry: AuditEntry

    @property
    def field(self) -> str:
        return SALESFORCE_FIELDS[self.channel]


def change_rows(entries: Iterable[AuditEntry]) -> Iterator[ChangeRow]:
    """One row per channel whose flag an entry moved."""
    for entry in entries:
        for channel in Channel.values:
            was = entry.before.get("opted_out", {}).get(channel, False)
            now = entry.after.get("opted_out", {}).get(channel, False)
            if was != now:
                yield ChangeRow(channel, OPTED_OUT if now else OPTED_IN, entry)


CHANGE_REPORT_HEADER = [
    "channel",
    "field",
    "direction",
    "contact_id",
    "salesforce_id",
    "ascend_id",
    "changed_at",
    "source",
    "actor",
    "audit_id",
]


def change_report_values(row: ChangeRow) -> list[object]:
    entry = row.entry
    contact = entry.contact
    assert contact is not None  # flag_changes() has only entries with a contact
    return [
        row.channel,
        row.field,
        row.direction,
        contact.pk,
        contact.salesforce_id,
        contact.ascend_id,
        timezone.localtime(entry.created_at).isoformat(timespec="seconds"),
        entry.get_source_display(),
        entry.actor_label,
        entry.pk,
    ]


def week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


@dataclass
class WeekCounts:
    week: date
    # action -> source -> count
    counts: dict[str, dict[str, int]]

    def total(self, action: str) -> int:
        return sum(self.counts[action].values())

    def by_source(self) -> list[tuple[int, int]]:
        """(opt-outs, re-enrolments) for each source, in Source order."""
        return [
            (self.counts[AuditAction.OPT_OUT][s], self.counts[AuditAction.RE_ENROLMENT][s])
            for s in Source.values
        ]


def weekly_counts(last_day: date, weeks: int) -> list[WeekCounts]:
    """Opt-outs and re-enrolments per week (Monday to Sunday, local time) by source."""
    first = week_start(last_day) - timedelta(weeks=weeks - 1)
    result = [
        WeekCounts(
            first + timedelta(weeks=n),
            {action: dict.fromkeys(Source.values, 0) for action, _ in CHART_ACTIONS},
        )
        for n in range(weeks)
    ]
    by_week = {w.week: w for w in result}
    rows = (
        AuditEntry.objects.filter(
            created_at__gte=day_start(first),
            created_at__lt=day_start(first + timedelta(weeks=weeks)),
            action__in=[action for action, _ in CHART_ACTIONS],
        )
        .annotate(week=TruncWeek("created_at"))
        .values("week", "action", "source")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in rows:
        week: datetime = row["week"]
        bucket = by_week.get(timezone.localtime(week).date())
        if bucket is not None:
            bucket.counts[row["action"]][row["source"]] = row["n"]
    return result


CHART_HEADER = ["week_starting", "source", "opt_outs", "re_enrolments"]


def chart_values(weeks: list[WeekCounts]) -> Iterator[list[object]]:
    for week in weeks:
        for source in Source.values:
            yield [
                week.week.isoformat(),
                Source(source).label,
                week.counts[AuditAction.OPT_OUT][source],
                week.counts[AuditAction.RE_ENROLMENT][source],
            ]
