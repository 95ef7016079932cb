"""The project's settings, with test-friendly defaults for what the environment leaves unset."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key")
os.environ.setdefault("STATIC_MANIFEST", "false")
os.environ.setdefault("SECURE_COOKIES", "false")

from config.settings import *  # noqa: F403

# Parallel test processes must not count each other's failed sign-ins: each keeps its own
# cache, unless a test points CACHE_URL at a Redis of its own.
if "CACHE_URL" not in os.environ:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Tests that commit changes enqueue pushes: keep them off any shared Redis. The tests that
# need a real broker (tests/reliability) start their own Redis and point Celery at it.
# Celery lets a CELERY_BROKER_URL environment variable win over settings and over later
# assignments to app.conf, so it is dropped here for the test process itself.
os.environ.pop("CELERY_BROKER_URL", None)
CELERY_BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL", "memory://")

# Hashing cost is not what these tests measure.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
WHITENOISE_USE_FINDERS = True

# Lets two test runs on one machine (say, a developer's and a helper's) use separate databases.
if os.environ.get("TEST_DATABASE_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["TEST_DATABASE_NAME"]}  # noqa: F405
