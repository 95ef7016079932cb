from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.ascend.client import AscendExportError
from integrations.ascend.sync import describe_run, export
from preferences.models import AscendRun


class Command(BaseCommand):
    help = (
        "Write the Ascend change file for every opt-out change since the last delivered run "
        "and deliver it; with --rerun, write and deliver that run's file again (same bytes)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rerun", type=int, metavar="RUN_ID", help="an AscendRun id")

    def handle(self, *args: Any, **options: Any) -> None:
        rerun = None
        if options["rerun"] is not None:
            rerun = AscendRun.objects.filter(pk=options["rerun"]).first()
            if rerun is None:
                raise CommandError(f"There is no Ascend run {options['rerun']}.")
        try:
            run = export(rerun=rerun)
        except (AscendExportError, ImproperlyConfigured) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(describe_run(run))
