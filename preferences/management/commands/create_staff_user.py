import getpass
from typing import Any

from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from preferences.roles import MANAGER, SPECIALIST, SYSTEM_TEAM

ROLE_NAMES = {"specialist": SPECIALIST, "manager": MANAGER, "system": SYSTEM_TEAM}


def create_staff_user(email: str, role: str, password: str) -> Any:
    """Create or update a staff account with exactly one role. System team may use the admin."""
    email = email.strip().lower()
    User = get_user_model()
    with transaction.atomic():
        user, _ = User.objects.get_or_create(username=email, defaults={"email": email})
        user.email = email
        user.is_staff = role == "system"
        user.set_password(password)
        user.save()
        user.groups.set([Group.objects.get(name=ROLE_NAMES[role])])
        EmailAddress.objects.update_or_create(
            user=user, email=email, defaults={"verified": True, "primary": True}
        )
    return user


class Command(BaseCommand):
    help = "Create (or update) a staff account with a role: specialist, manager or system."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--role", required=True, choices=sorted(ROLE_NAMES))
        parser.add_argument(
            "--password", help="Omit to be prompted (do not put real passwords in shell history)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = options["password"] or getpass.getpass("Password: ")
        try:
            validate_password(password)
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        user = create_staff_user(options["email"], options["role"], password)
        self.stdout.write(f"{user.email}: {ROLE_NAMES[options['role']]}")
