"""A staff member who is deactivated is signed out at once: their next request, in a
session they already hold, is treated as anonymous."""

from __future__ import annotations

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_a_deactivated_user_s_open_session_ends_at_once(specialist_client, specialist):
    search = reverse("preferences:search")
    assert specialist_client.get(search).status_code == 200
    specialist.is_active = False
    specialist.save(update_fields=["is_active"])
    answer = specialist_client.get(search)
    assert answer.status_code == 302
    assert reverse("account_login") in answer["Location"]
