from allauth.account.adapter import DefaultAccountAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.http import HttpRequest


class StaffAccountAdapter(DefaultAccountAdapter):
    """Accounts are made by an administrator (manage.py create_staff_user); no sign-up."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return False


class StaffSocialAccountAdapter(DefaultSocialAccountAdapter):
    """Single sign-on signs in existing staff only."""

    def is_open_for_signup(self, request: HttpRequest, sociallogin: object) -> bool:
        return False
