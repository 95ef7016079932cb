"""Preference Desk settings, read from the environment (12-factor).

The defaults are safe for development; production sets SECRET_KEY, DEBUG=false,
ALLOWED_HOSTS, DATABASE_URL and CELERY_BROKER_URL.
"""

import re
from pathlib import Path

import dj_database_url
import django_stubs_ext
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from config.env import envbool, envint, envlist, envstr

django_stubs_ext.monkeypatch()  # lets admin.ModelAdmin[Model] and friends be subscripted

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = envbool("DEBUG", False)
SECRET_KEY = envstr("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "development-only-secret-key-not-for-production"  # noqa: S105 (DEBUG only)

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
SITE_ID = 1

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django.contrib.sites",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "django_htmx",
    "template_partials",
    "pgtrigger",
    "preferences",
    "audit",
    # The sync core, then each outside system in the order the contact page lists them;
    # each registers its sync target when ready (integrations/core.py).
    "integrations",
    "integrations.salesforce",
    "integrations.ascend",
    "integrations.marketing_cloud",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "audit.context_processors.review_queue",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/preference_desk"),
        conn_max_age=envint("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Staff sign in with their email; accounts are made by an administrator only.
ACCOUNT_ADAPTER = "preferences.auth.StaffAccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_SESSION_REMEMBER = False
ACCOUNT_LOGOUT_ON_GET = False
SOCIALACCOUNT_ADAPTER = "preferences.auth.StaffSocialAccountAdapter"
SOCIALACCOUNT_ONLY = False
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "preferences:search"

# Single sign-on is optional: set OIDC_SERVER_URL, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET.
SOCIALACCOUNT_PROVIDERS: dict[str, dict[str, object]] = {}
if envstr("OIDC_SERVER_URL", ""):
    SOCIALACCOUNT_PROVIDERS["openid_connect"] = {
        "APPS": [
            {
                "provider_id": "sso",
                "name": envstr("OIDC_NAME", "University sign-on"),
                "client_id": envstr("OIDC_CLIENT_ID", ""),
                "secret": envstr("OIDC_CLIENT_SECRET", ""),
                "settings": {"server_url": envstr("OIDC_SERVER_URL", "")},
            }
        ]
    }

SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_AGE = envint("SESSION_COOKIE_AGE", 8 * 60 * 60)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
# HSTS: off unless set, as a wrong value locks browsers out of plain HTTP for its length.
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if envbool("BEHIND_PROXY", False) else None
)

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("TIME_ZONE", "America/Denver")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if envbool("STATIC_MANIFEST", not DEBUG)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "preference-desk@localhost")
# The system eComm team's address: told when a specialist marks a re-subscribe request urgent.
RESUBSCRIBE_NOTIFY_EMAIL = envstr("RESUBSCRIBE_NOTIFY_EMAIL", "ecomm-system-team@localhost")

CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

# The shared cache: sign-in throttling (allauth's rate limits) counts in it, so every web
# process and host sees the same counts, and a restart does not reset them. By default the
# broker's Redis, in a database of its own; CACHE_URL=locmem:// keeps it in each process.
_default_cache = (
    CELERY_BROKER_URL.rsplit("/", 1)[0] + "/1"
    if CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
    else "locmem://"
)
CACHE_URL = envstr("CACHE_URL", _default_cache)
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
        if CACHE_URL.startswith("locmem://")
        else {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "preference-desk",
        }
    )
}
# The client's address, for throttling per address, comes from X-Forwarded-For only behind
# this many proxies of ours (or from the header a trusted proxy sets); otherwise anyone
# could choose the address they are counted under, or, behind a proxy, all staff would share
# the proxy's.
ALLAUTH_TRUSTED_PROXY_COUNT = envint("TRUSTED_PROXY_COUNT", 0)
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = envstr("TRUSTED_CLIENT_IP_HEADER", "") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
}

CSRF_FAILURE_VIEW = "config.views.csrf_failure"

# --- Sync ------------------------------------------------------------------------------------
# Salesforce (integrations/salesforce/). The stand-in (standins/salesforce/) is reached the
# same way: only the login URL, the credentials and the CA bundle differ.
# The org's My Domain URL (https://<domain>.my.salesforce.com): the client credentials flow
# is refused at login.salesforce.com, so there is no generic default.
SALESFORCE_LOGIN_URL = envstr("SALESFORCE_LOGIN_URL", "")
SALESFORCE_AUTH = envstr("SALESFORCE_AUTH", "client_credentials")  # or "jwt"
SALESFORCE_CLIENT_ID = envstr("SALESFORCE_CLIENT_ID", "")
SALESFORCE_CLIENT_SECRET = envstr("SALESFORCE_CLIENT_SECRET", "")
SALESFORCE_USERNAME = envstr("SALESFORCE_USERNAME", "")  # JWT bearer only
SALESFORCE_PRIVATE_KEY = envstr("SALESFORCE_PRIVATE_KEY", "")  # PEM or a path; JWT only
SALESFORCE_CA_BUNDLE = envstr("SALESFORCE_CA_BUNDLE", "")
SALESFORCE_API_VERSION = envstr("SALESFORCE_API_VERSION", "60.0")
SALESFORCE_TIMEOUT = envint("SALESFORCE_TIMEOUT", 30)
SALESFORCE_CONNECT_TIMEOUT = envint("SALESFORCE_CONNECT_TIMEOUT", 10)
SALESFORCE_TASK_EXTERNAL_ID = envstr("SALESFORCE_TASK_EXTERNAL_ID", "Preference_Change_Id__c")
# "upsert" on that field as an external ID; "query" where an Activity field cannot be one:
# the app looks for the change's Task before creating it (README, "Salesforce set-up").
SALESFORCE_TASK_MATCH = envstr("SALESFORCE_TASK_MATCH", "upsert")
# Where contacts live in the org (integrations/salesforce/objects.py): Contacts always; Leads
# unless turned off; Person Accounts only where the org has them turned on.
SALESFORCE_ASCEND_ID_FIELD = envstr("SALESFORCE_ASCEND_ID_FIELD", "Ascend_Id__c")
SALESFORCE_LEADS = envbool("SALESFORCE_LEADS", True)
SALESFORCE_PERSON_ACCOUNTS = envbool("SALESFORCE_PERSON_ACCOUNTS", False)
# The Contact field every push writes the contact's version to; the org's validation rule
# refuses a lower one, so a late, older write cannot win (README, "Salesforce set-up").
SALESFORCE_VERSION_FIELD = envstr("SALESFORCE_VERSION_FIELD", "Preference_Version__c")
# How long a request whose answer never came may still run in Salesforce: its REST calls end
# after 10 minutes ("API Timeout Limits"), plus a margin. Then the values are read back.
SALESFORCE_MAX_REQUEST_SECONDS = envint("SALESFORCE_MAX_REQUEST_SECONDS", 11 * 60)
SALESFORCE_ENABLED = envbool("SALESFORCE_ENABLED", bool(SALESFORCE_CLIENT_ID))
# Marketing Cloud (integrations/marketing_cloud/): subscriber status per business unit, read
# and reset through the SOAP API. The stand-in (standins/marketing_cloud/) is reached the
# same way. The auth URL is the tenant's https://<subdomain>.auth.marketingcloudapis.com.
MARKETING_CLOUD_AUTH_URL = envstr("MARKETING_CLOUD_AUTH_URL", "")
MARKETING_CLOUD_CLIENT_ID = envstr("MARKETING_CLOUD_CLIENT_ID", "")
MARKETING_CLOUD_CLIENT_SECRET = envstr("MARKETING_CLOUD_CLIENT_SECRET", "")
MARKETING_CLOUD_ACCOUNT_ID = envstr("MARKETING_CLOUD_ACCOUNT_ID", "")  # the parent's MID
MARKETING_CLOUD_CA_BUNDLE = envstr("MARKETING_CLOUD_CA_BUNDLE", "")
MARKETING_CLOUD_TIMEOUT = envint("MARKETING_CLOUD_TIMEOUT", 30)
MARKETING_CLOUD_CONNECT_TIMEOUT = envint("MARKETING_CLOUD_CONNECT_TIMEOUT", 10)
MARKETING_CLOUD_ENABLED = envbool("MARKETING_CLOUD_ENABLED", bool(MARKETING_CLOUD_CLIENT_ID))
# The contact page's Refresh reads while the specialist waits: a shorter read timeout there.
MARKETING_CLOUD_REFRESH_TIMEOUT = envint("MARKETING_CLOUD_REFRESH_TIMEOUT", 5)
# The pull of tracking events for commercial sends (UnsubEvent, BounceEvent; docs/design.md,
# "Events from email platforms"): how often, and how far back the first pull reads.
MARKETING_CLOUD_TRACKING_SECONDS = envint("MARKETING_CLOUD_TRACKING_SECONDS", 300)
MARKETING_CLOUD_TRACKING_START_DAYS = envint("MARKETING_CLOUD_TRACKING_START_DAYS", 1)

SYNC_PUSH_DELAY_SECONDS = envint("SYNC_PUSH_DELAY_SECONDS", 2)  # lets a burst share one call
SYNC_CLAIM_LEASE_SECONDS = envint("SYNC_CLAIM_LEASE_SECONDS", 300)
SYNC_RETRY_BASE_SECONDS = envint("SYNC_RETRY_BASE_SECONDS", 15)
SYNC_RETRY_MAX_SECONDS = envint("SYNC_RETRY_MAX_SECONDS", 30 * 60)
SYNC_SWEEP_SECONDS = envint("SYNC_SWEEP_SECONDS", 60)
# Four eyes (docs/design.md, "The audit log"): nobody reviews their own risky action,
# except the managers named here (usernames, comma-separated), each the one manager of an
# office; such a review says so in its note.
SELF_REVIEW_ALLOWED_FOR = [name.lower() for name in envlist("SELF_REVIEW_ALLOWED_FOR", [])]
# Events from email platforms (docs/design.md, "Events from email platforms"): a soft
# bounce is retried by the platform, so only SOFT_BOUNCE_LIMIT of them within
# SOFT_BOUNCE_DAYS make an address Bounced.
SOFT_BOUNCE_LIMIT = envint("SOFT_BOUNCE_LIMIT", 3)
SOFT_BOUNCE_DAYS = envint("SOFT_BOUNCE_DAYS", 7)
# The endpoints that receive them (preferences/events/views.py). Marketing Cloud's Event
# Notification Service signs with the key it gave when the callback was created; empty turns
# the callback off (404). ENS retries for days, so its events are refused only once older
# than EVENT_MAX_AGE_SECONDS; a webhook's signed timestamp must be within EVENT_REPLAY_SECONDS.
MARKETING_CLOUD_ENS_SIGNATURE_KEY = envstr("MARKETING_CLOUD_ENS_SIGNATURE_KEY", "")
MARKETING_CLOUD_ENS_CALLBACK_ID = envstr("MARKETING_CLOUD_ENS_CALLBACK_ID", "")
EVENT_MAX_AGE_SECONDS = envint("EVENT_MAX_AGE_SECONDS", 3 * 24 * 3600)
EVENT_REPLAY_SECONDS = envint("EVENT_REPLAY_SECONDS", 300)
EVENT_MAX_BODY_BYTES = envint("EVENT_MAX_BODY_BYTES", 1024 * 1024)
# The signed webhook's senders, "name=secret,name2=secret2": /events/webhook/<name>/.
EVENT_WEBHOOK_SECRETS: dict[str, str] = {}
for _item in envlist("EVENT_WEBHOOK_SECRETS", []):
    _name, _, _secret = _item.partition("=")
    _name = _name.strip()
    if not re.fullmatch(r"[a-z0-9_-]{1,40}", _name) or not _secret or _name == "marketing_cloud":
        raise ImproperlyConfigured(
            "EVENT_WEBHOOK_SECRETS is name=secret,... with names of a-z, 0-9, _ and - "
            "(not marketing_cloud) and non-empty secrets"
        )
    EVENT_WEBHOOK_SECRETS[_name] = _secret.strip()
SYNC_PULL_SECONDS = envint("SYNC_PULL_SECONDS", 120)
SYNC_PULL_LAG_SECONDS = envint("SYNC_PULL_LAG_SECONDS", 5)  # writes commit after their stamp
SYNC_VERIFY_SECONDS = envint("SYNC_VERIFY_SECONDS", 60)  # how often uncertain pushes are read back

# Bulk changes (preferences/bulk/jobs.py): a worker holds a run for BULK_LEASE_SECONDS, renewed as
# it works; a run whose worker died is queued again once its lease has run out.
BULK_LEASE_SECONDS = envint("BULK_LEASE_SECONDS", 60)
BULK_RESUME_SECONDS = envint("BULK_RESUME_SECONDS", 60)

# Ascend's nightly change file: a directory, or sftp://user@host:port/dir.
ASCEND_DESTINATION = envstr("ASCEND_DESTINATION", str(BASE_DIR / ".data" / "ascend"))
ASCEND_SFTP_KEY_FILE = envstr("ASCEND_SFTP_KEY_FILE", "")
ASCEND_SFTP_PASSWORD = envstr("ASCEND_SFTP_PASSWORD", "")
ASCEND_SFTP_HOST_KEY = envstr("ASCEND_SFTP_HOST_KEY", "")
ASCEND_SFTP_TIMEOUT = envint("ASCEND_SFTP_TIMEOUT", 30)
ASCEND_STAGING_DIR = envstr("ASCEND_STAGING_DIR", str(BASE_DIR / ".data" / "ascend-staging"))

# A broker outage must not hold a request: publishing fails fast, the sweeper catches up.
CELERY_TASK_PUBLISH_RETRY = False
CELERY_BROKER_CONNECTION_TIMEOUT = 3
# max_retries 0: kombu's own reconnect loop would otherwise hold a request for seconds.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 600, "max_retries": 0}
CELERY_BEAT_SCHEDULE = {
    "sweep-sync": {"task": "integrations.tasks.sweep", "schedule": float(SYNC_SWEEP_SECONDS)},
    "pull-salesforce": {
        "task": "integrations.salesforce.tasks.pull_from_salesforce",
        "schedule": float(SYNC_PULL_SECONDS),
    },
    "verify-salesforce": {
        "task": "integrations.salesforce.tasks.verify_uncertain",
        "schedule": float(SYNC_VERIFY_SECONDS),
        "options": {"expires": float(SYNC_VERIFY_SECONDS)},
    },
    "resume-bulk-runs": {
        "task": "preferences.tasks.resume_bulk_runs",
        "schedule": float(BULK_RESUME_SECONDS),
        # Ticks queued while no worker was up are stale: one is enough, not a backlog.
        "options": {"expires": float(BULK_RESUME_SECONDS)},
    },
    "pull-marketing-cloud-tracking": {
        "task": "integrations.marketing_cloud.tasks.pull_tracking_events",
        "schedule": float(MARKETING_CLOUD_TRACKING_SECONDS),
        "options": {"expires": float(MARKETING_CLOUD_TRACKING_SECONDS)},
    },
    "apply-platform-events": {
        "task": "preferences.events.tasks.apply_platform_events",
        "schedule": float(SYNC_SWEEP_SECONDS),
        "options": {"expires": float(SYNC_SWEEP_SECONDS)},
    },
    "reconcile-nightly": {
        "task": "integrations.tasks.reconcile_nightly",
        "schedule": crontab(hour=envint("RECONCILE_HOUR_UTC", 9), minute=0),
    },
    "ascend-nightly": {
        "task": "integrations.ascend.tasks.ascend_nightly",
        "schedule": crontab(hour=envint("ASCEND_HOUR_UTC", 8), minute=0),
    },
}
