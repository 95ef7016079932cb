"""manage.py salesforce_preflight: does the Salesforce org have every field, External ID,
permission and validation rule the app needs? (README, "Salesforce set-up".) The checks are
integrations/salesforce/preflight.py; this prints their report and exits 1 if anything is
missing, so a deploy script can stop on it."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from integrations.salesforce import preflight


class Command(BaseCommand):
    help = (
        "Read Salesforce's describe of Contact, Lead, Account and Task and its validation "
        "rules, and list everything the app needs that is missing, with the set-up step. "
        "Exit status 1 if anything is."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        report = preflight.run()
        self.stdout.write(preflight.render(report))
        if not report.ready:
            # Not CommandError: the report above already says what is wrong, in full.
            sys.exit(1)
