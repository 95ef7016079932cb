from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.verify import verify_chain


class Command(BaseCommand):
    help = (
        "Check the audit log's hash chain; name the first entry that does not match. "
        "Exits non-zero when the chain is broken."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--limit", type=int, default=20, help="stop after this many problems (default 20)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = verify_chain(limit=options["limit"])
        if report.ok:
            self.stdout.write(
                self.style.SUCCESS(f"Audit log intact: {report.checked} entries checked.")
            )
            # Copied somewhere else (a ticket, the Ascend file), the head also proves that
            # the chain was not rewritten from the start.
            self.stdout.write(f"Chain head: seal {report.head_seq}, {report.head_hash}")
            return
        first = report.problems[0]
        for problem in report.problems:
            self.stderr.write(problem.message)
        raise CommandError(
            f"Audit log does not verify: first mismatch at entry #{first.entry_id}"
            if first.entry_id is not None
            else "Audit log does not verify."
        )
