"""Sign-in throttling counts in the shared cache (Redis), so every web process sees the same
counts; and the address it counts per is the client's only behind a trusted proxy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.sites.models import Site
from django.test import Client

from preferences.management.commands.create_staff_user import create_staff_user
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
LOGIN = "/accounts/login/"
TOO_MANY = "Too many failed login attempts"


@pytest.fixture
def redis_cache(settings) -> Iterator[str]:
    """A Redis of this test's own, as the app's cache."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/1"
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": url,
                "KEY_PREFIX": "preference-desk",
            }
        }
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _fail(client: Client, email: str, **headers: str) -> str:
    answer = client.post(LOGIN, {"login": email, "password": "wrong password"}, headers=headers)
    return answer.content.decode()


def _limited_elsewhere(url: str, key: str) -> bool:
    """Asks a second Python process, through the same cache, whether the account's failed
    sign-ins are used up."""
    code = (
        "import django; django.setup()\n"
        "from django.test import RequestFactory\n"
        "from allauth.core.internal import ratelimit\n"
        "request = RequestFactory().post('/accounts/login/', REMOTE_ADDR='198.51.100.9')\n"
        f"left = ratelimit.consume(request, app='allauth.account', action='login_failed', "
        f"key={key!r}, dry_run=True)\n"
        "print('limited' if not left else 'free')\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": "x",
        "CACHE_URL": url,
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "limited"


def test_failed_sign_ins_are_counted_where_every_process_sees_them(redis_cache):
    email = "locked.out@test.example"
    create_staff_user(email, "specialist", PASSWORD)
    domain = Site.objects.get_current().domain
    client = Client()
    for _ in range(5):
        assert TOO_MANY not in _fail(client, email)
    assert TOO_MANY in _fail(client, email)
    assert TOO_MANY in _fail(Client(), email)  # another browser: the account is locked
    assert _limited_elsewhere(redis_cache, f"{domain}:{email}")
    assert not _limited_elsewhere(redis_cache, f"{domain}:someone.else@test.example")


def _many_accounts_fail_from(client: Client, address: str, count: int) -> None:
    for n in range(count):
        _fail(client, f"nobody{n}-{address}@test.example", x_forwarded_for=address)


def test_behind_a_trusted_proxy_each_client_is_counted_on_its_own(settings, redis_cache):
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1
    client = Client()
    _many_accounts_fail_from(client, "203.0.113.5", 10)
    attacker = _fail(client, "one.more@test.example", x_forwarded_for="203.0.113.5")
    colleague = _fail(client, "colleague@test.example", x_forwarded_for="203.0.113.77")
    assert TOO_MANY in attacker
    assert TOO_MANY not in colleague


def test_without_a_trusted_proxy_the_forwarded_address_is_not_believed(settings, redis_cache):
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 0
    client = Client()
    _many_accounts_fail_from(client, "203.0.113.5", 10)
    # A forged X-Forwarded-For does not escape the count of the real address.
    forged = _fail(client, "colleague@test.example", x_forwarded_for="203.0.113.77")
    assert TOO_MANY in forged
