"""Security headers on every page, and HSTS set from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def test_pages_carry_the_content_security_and_permissions_policies(specialist_client):
    answer = specialist_client.get(reverse("preferences:search"))
    assert answer.status_code == 200
    assert "script-src 'self'" in answer["Content-Security-Policy"]
    policy = answer["Permissions-Policy"]
    for feature in ("camera=()", "microphone=()", "geolocation=()", "payment=()"):
        assert feature in policy


def _settings_with(env: dict[str, str], *names: str) -> list[str]:
    code = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings');"
        "django.setup(); from django.conf import settings;"
        f"print(*[repr(getattr(settings, n)) for n in {list(names)!r}], sep='\\n')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "SECRET_KEY": "x", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def test_hsts_comes_from_the_environment_and_is_off_by_default():
    names = ("SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD")
    assert _settings_with({}, *names) == ["0", "False", "False"]
    env = {
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "SECURE_HSTS_PRELOAD": "true",
    }
    assert _settings_with(env, *names) == ["31536000", "True", "True"]


def test_check_deploy_is_clean_with_the_readmes_production_variables():
    # Only what the README lists: nothing the test run itself sets (SECURE_COOKIES, say).
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "DEBUG"))}
    env = {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "config.settings",  # not the tests' own defaults
        "DEBUG": "false",
        "SECRET_KEY": "k" * 20 + "-production-like-secret-key-of-fifty-plus-characters",
        "ALLOWED_HOSTS": "prefdesk.example.edu",
        "SECURE_SSL_REDIRECT": "true",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "SECURE_HSTS_PRELOAD": "true",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout
