"""manage.py load_contacts: the initial load from Salesforce (docs/design.md, "Initial
load"). The work is integrations/salesforce/load.py; this shows its progress and summary."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.utils import timezone
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from integrations.base import ConnectorError, describe
from integrations.models import ContactLoad
from integrations.salesforce import objects
from integrations.salesforce.client import BULK_PAGE_SIZE
from integrations.salesforce.load import WRITERS, LoadBusy, load_contacts, open_run


class _Bar:
    """A progress bar per object, for a terminal."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows, {task.fields[pages]} pages"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stdout),
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _Bar:
        self.bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.bar.stop()

    def started(self, name: str, *, total: int, rows: int, pages: int) -> None:
        if name in self.tasks:  # read again with a new job
            self.bar.update(self.tasks[name], total=total, completed=rows, pages=pages)
            return
        self.tasks[name] = self.bar.add_task(name, total=total, completed=rows, pages=pages)

    def advanced(self, name: str, *, rows: int, pages: int) -> None:
        self.bar.update(self.tasks[name], completed=rows, pages=pages)

    def finished(self, name: str, *, rows: int, pages: int) -> None:
        self.bar.update(self.tasks[name], total=rows, completed=rows, pages=pages)


class _Lines:
    """A line per page, for a log."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out
        self.totals: dict[str, int] = {}

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def started(self, name: str, *, total: int, rows: int, pages: int) -> None:
        self.totals[name] = total
        done = f", {rows:,} in {pages} pages already loaded" if pages else ""
        self.out.write(f"{name}: {total:,} records to read{done}")

    def advanced(self, name: str, *, rows: int, pages: int) -> None:
        self.out.write(f"{name}: page {pages} loaded, {rows:,} / {self.totals[name]:,} records")

    def finished(self, name: str, *, rows: int, pages: int) -> None:
        self.out.write(f"{name}: done, {rows:,} records in {pages} pages")


def summary(run: ContactLoad) -> list[str]:
    lines = [f"Contact load {run.pk}, started {timezone.localtime(run.started_at):%Y-%m-%d %H:%M}:"]
    order = {found.name: n for n, found in enumerate(objects.in_use())}
    for name, entry in sorted(run.progress.items(), key=lambda item: order.get(item[0], 99)):
        newest = entry.get("latest_modified") or "-"
        lines.append(
            f"  {name}: {entry.get('rows', 0):,} records in {entry.get('pages', 0)} pages "
            f"(query job {entry.get('job_id')}; newest LastModifiedDate {newest})"
        )
    lines += [
        f"Contacts created:      {run.created:,} ({run.with_opt_outs:,} with opt-outs)",
        f"Known contacts:        {run.updated:,} updated, {run.unchanged:,} unchanged",
        f"Ascend ID collisions:  {run.ascend_collisions:,} (loaded without an Ascend ID that "
        "another contact has)",
        f"Pages: {run.pages:,}; API calls: {run.api_calls:,}; seconds: {run.seconds:.1f}",
    ]
    return lines


class Command(BaseCommand):
    help = (
        "Load every Contact (and Person Account and Lead, where in use) from Salesforce "
        "through Bulk API 2.0 queries: new contacts with their starting state, known ones' "
        "identity. Resumes an interrupted load from its last finished page."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--page-size",
            type=int,
            default=BULK_PAGE_SIZE,
            help=f"records per Bulk API result page (default {BULK_PAGE_SIZE:,})",
        )
        parser.add_argument(
            "--writers",
            type=int,
            default=WRITERS,
            help=f"database connections writing pages at once, in order (default {WRITERS}); "
            "a kill loses at most this many pages read and not written",
        )
        parser.add_argument(
            "--restart",
            action="store_true",
            help="start a new load instead of resuming an unfinished one",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.SALESFORCE_ENABLED:
            raise CommandError("Salesforce is not enabled (SALESFORCE_ENABLED).")
        if options["page_size"] < 1 or options["writers"] < 1:
            raise CommandError("--page-size and --writers must be at least 1")
        run, resumed = open_run(restart=options["restart"])
        if resumed:
            self.stdout.write(
                f"Resuming contact load {run.pk} (started "
                f"{timezone.localtime(run.started_at):%Y-%m-%d %H:%M}): {run.rows:,} records "
                f"in {run.pages} pages already loaded."
            )
        progress: _Bar | _Lines = _Bar() if self.stdout.isatty() else _Lines(self.stdout)
        try:
            with progress:
                run = load_contacts(
                    page_size=options["page_size"],
                    writers=options["writers"],
                    progress=progress,
                    run=run,
                )
        except LoadBusy as error:
            raise CommandError(str(error)) from None
        except ConnectorError as error:
            raise CommandError(
                f"Salesforce: {describe(error)}. Run load_contacts again to carry on from the "
                "last page loaded."
            ) from None
        for line in summary(run):
            self.stdout.write(line)
