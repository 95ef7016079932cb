import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("preference_desk")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Feature packages that are not apps of their own.
app.autodiscover_tasks(["preferences.events"])
