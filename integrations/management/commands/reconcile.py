from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations import core, reconcile
from integrations.models import APP, ReconcileRun


def describe(run: ReconcileRun) -> str:
    found = ", ".join(f"{kind} {count:,}" for kind, count in sorted(run.found.items())) or "none"
    took = (run.finished_at - run.started_at).total_seconds() if run.finished_at else 0.0
    state = "FAILED" if run.failed else "done"
    return (
        f"{run.system}: {state} in {took:.1f} s; {run.compared:,} compared, "
        f"{run.skipped:,} in flight; found {found}; {run.opened:,} new, {run.closed:,} gone. "
        f"{run.detail}"
    ).strip()


class Command(BaseCommand):
    help = (
        "Compare what Salesforce, Ascend and the app's own data hold with the app, and record "
        "every discrepancy (the nightly reconciliation, now)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        systems = [t.name for t in core.targets() if t.reconcile or t.refresh]
        parser.add_argument(
            "--system",
            action="append",
            choices=[*systems, APP],
            help="only this system (repeatable); default: all",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            runs = reconcile.run(options["system"])
        except reconcile.ReconcileBusy as error:
            raise CommandError(str(error)) from None
        for run in runs:
            self.stdout.write(describe(run))
        if any(run.failed for run in runs):
            raise CommandError("A system could not be reconciled; see above.")
