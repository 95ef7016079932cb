from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone

from audit.forms import day_start
from audit.models import AuditAction
from audit.reports import week_start
from lib.charts import nice_step
from preferences.models import Source
from preferences.services import apply_change
from tests import factories
from tests.audit.audit_data import HTMX, entry, opt_out, re_enrol

pytestmark = pytest.mark.django_db

REPORTS = reverse("audit:reports")
CHANGES_CSV = reverse("audit:change_report_export")
WEEKLY_CSV = reverse("audit:chart_export")


def _csv(response) -> list[dict[str, str]]:
    assert isinstance(response, StreamingHttpResponse)
    text = response.getvalue().decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def _flag_entry(days_ago: int, channel: str, opted_out: bool, contact, **fields):
    """An opt-out or re-enrolment entry as apply_change writes it, dated in the past."""
    other = "phone" if channel == "email" else "email"
    before = {
        "opted_out": {channel: not opted_out, other: False},
        "categories": [],
        "bounced": False,
    }
    after = {"opted_out": {channel: opted_out, other: False}, "categories": [], "bounced": False}
    return entry(
        created_at=timezone.now() - timedelta(days=days_ago),
        action=AuditAction.OPT_OUT if opted_out else AuditAction.RE_ENROLMENT,
        contact=contact,
        contact_version=1,
        channels=[channel],
        before=before,
        after=after,
        source=fields.pop("source", Source.STAFF),
        **fields,
    )


@pytest.fixture
def changes(categories, specialist):
    """This week: an email opt-out and re-enrolment, a phone opt-out, a category change;
    a month ago: an email opt-out (outside the default range)."""
    ada, bo = factories.make_contact(), factories.make_contact()
    old = _flag_entry(30, "email", True, bo, note="Old opt-out.")
    out = opt_out(ada, specialist)
    back = re_enrol(ada, specialist)
    apply_change(
        contact=ada, actor=specialist, source="staff", note="News", categories={"newsletter"}
    )
    phone = opt_out(bo, None, "phone", source=Source.SALESFORCE, note="DoNotCall in Salesforce")
    return {"ada": ada, "bo": bo, "old": old, "out": out, "back": back, "phone": phone}


def _summary_cells(html: str, channel: str) -> tuple[int, int]:
    row = re.search(rf'<tr data-channel="{channel}">(.*?)</tr>', html, re.S)
    assert row is not None
    out = re.search(r'class="opted-out">(\d+)<', row.group(1))
    back = re.search(r'class="opted-in">(\d+)<', row.group(1))
    assert out is not None and back is not None
    return int(out.group(1)), int(back.group(1))


def test_change_report_counts_each_flag_move_per_channel_in_the_range(manager_client, changes):
    response = manager_client.get(REPORTS)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html
    assert _summary_cells(html, "email") == (1, 1)
    assert _summary_cells(html, "phone") == (1, 0)
    assert "HasOptedOutOfEmail" in html and "DoNotCall" in html


def test_a_wider_range_takes_in_the_older_change(manager_client, changes):
    start = (timezone.localdate() - timedelta(days=40)).isoformat()
    html = manager_client.get(REPORTS + f"?start={start}").content.decode()
    assert _summary_cells(html, "email") == (2, 1)


def test_change_report_csv_lists_each_change_with_both_contact_ids(manager_client, changes):
    response = manager_client.get(CHANGES_CSV)
    assert response["Content-Disposition"].startswith('attachment; filename="change-report-')
    rows = _csv(response)
    ada, bo = changes["ada"], changes["bo"]
    assert [(r["channel"], r["direction"], r["audit_id"]) for r in rows] == [
        ("email", "FALSE->TRUE", str(changes["out"].pk)),
        ("email", "TRUE->FALSE", str(changes["back"].pk)),
        ("phone", "FALSE->TRUE", str(changes["phone"].pk)),
    ]
    first, _, last = rows
    assert first["field"] == "HasOptedOutOfEmail"
    assert (first["contact_id"], first["salesforce_id"], first["ascend_id"]) == (
        str(ada.pk),
        ada.salesforce_id,
        ada.ascend_id,
    )
    assert first["actor"] == "specialist@test.example" and first["source"] == "Staff"
    assert (last["salesforce_id"], last["ascend_id"]) == (bo.salesforce_id, bo.ascend_id)
    assert (last["source"], last["actor"]) == ("Salesforce", "Salesforce")
    assert last["changed_at"].startswith(timezone.localdate().isoformat())


def test_one_change_to_both_channels_is_two_rows(manager_client, contact, specialist):
    both = apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="Stop everything.",
        opt_out={"email": True, "phone": True},
    )
    rows = _csv(manager_client.get(CHANGES_CSV))
    assert [(r["channel"], r["audit_id"]) for r in rows] == [
        ("email", str(both.pk)),
        ("phone", str(both.pk)),
    ]


def test_change_report_csv_uses_the_chosen_dates(manager_client, changes):
    day = (timezone.localdate() - timedelta(days=30)).isoformat()
    rows = _csv(manager_client.get(CHANGES_CSV + f"?start={day}&end={day}"))
    assert [r["audit_id"] for r in rows] == [str(changes["old"].pk)]


def test_change_report_csv_escapes_formulas(manager_client, contact):
    _flag_entry(1, "email", True, contact, actor_label="=cmd|'/C calc'!A0")
    rows = _csv(manager_client.get(CHANGES_CSV))
    assert rows[0]["actor"] == "'=cmd|'/C calc'!A0"


def _panel(html: str, title: str) -> str:
    for svg in re.findall(r'<svg class="bars".*?</svg>', html, re.S):
        if f">{title} per week" in svg:
            return svg
    raise AssertionError(f"no chart titled {title}")


def _bars(svg: str) -> list[tuple[str, float, str]]:
    return [
        (css, float(height), title)
        for css, height, title in re.findall(
            r'<rect class="(src-[a-z-]+)" x="[\d.]+" y="[\d.]+" width="[\d.]+" '
            r'height="([\d.]+)"><title>(.*?)</title></rect>',
            svg,
        )
    ]


def test_chart_draws_a_bar_per_week_and_source_as_svg_without_inline_styles(
    manager_client, categories, specialist
):
    this_week = timezone.localdate()
    last_week = this_week - timedelta(days=7)
    contacts = [factories.make_contact() for _ in range(4)]
    for contact in contacts[:2]:
        _flag_entry((this_week - last_week).days, "email", True, contact)
    _flag_entry(0, "email", True, contacts[2], source=Source.EMAIL_PLATFORM)
    _flag_entry(0, "phone", False, contacts[3], source=Source.STAFF)
    html = manager_client.get(REPORTS + "?weeks=4").content.decode()
    assert "style=" not in html.split('<section class="card chart">', 1)[1]
    opt_outs = _bars(_panel(html, "Opt-outs"))
    assert sorted((css, title.split(":")[1].strip()) for css, _, title in opt_outs) == [
        ("src-email-platform", "1 opt-outs from Email platform"),
        ("src-staff", "2 opt-outs from Staff"),
    ]
    heights = {css: height for css, height, _ in opt_outs}
    assert heights["src-staff"] == pytest.approx(2 * heights["src-email-platform"], abs=0.2)
    re_enrolments = _bars(_panel(html, "Re-enrolments"))
    assert [(css, title.split(":")[1].strip()) for css, _, title in re_enrolments] == [
        ("src-staff", "1 re-enrolments from Staff")
    ]
    assert f"Week of {week_start(this_week):%-d %b %Y}" in re_enrolments[0][2]
    assert 'role="img"' in html


def test_chart_numbers_as_csv(manager_client, categories):
    contact = factories.make_contact()
    _flag_entry(0, "email", True, contact, source=Source.EMAIL_PLATFORM)
    _flag_entry(0, "email", False, contact)
    rows = _csv(manager_client.get(WEEKLY_CSV + "?weeks=2"))
    monday = week_start(timezone.localdate())
    assert len(rows) == 2 * len(Source.values)
    this_week = {r["source"]: r for r in rows if r["week_starting"] == monday.isoformat()}
    assert this_week["Email platform"]["opt_outs"] == "1"
    assert this_week["Staff"]["re_enrolments"] == "1"
    assert this_week["Staff"]["opt_outs"] == "0"
    last_week = [r for r in rows if r["week_starting"] == (monday - timedelta(days=7)).isoformat()]
    assert {r["opt_outs"] for r in last_week} == {"0"}


def test_weeks_start_on_monday_in_local_time(manager_client, categories):
    monday = week_start(timezone.localdate())
    # Ten minutes before local midnight on Sunday belongs to the week before.
    late_sunday = day_start(monday) - timedelta(minutes=10)
    contact = factories.make_contact()
    entry(
        created_at=late_sunday,
        action=AuditAction.OPT_OUT,
        contact=contact,
        contact_version=1,
        channels=["email"],
        before={"opted_out": {"email": False, "phone": False}, "categories": []},
        after={"opted_out": {"email": True, "phone": False}, "categories": []},
    )
    rows = _csv(manager_client.get(WEEKLY_CSV + "?weeks=2"))
    counted = [r["week_starting"] for r in rows if r["opt_outs"] == "1"]
    assert counted == [(monday - timedelta(days=7)).isoformat()]


def test_nice_axis_steps():
    assert [nice_step(n) for n in (0, 3, 7, 10, 33, 120, 999, 5000)] == [
        1,
        1,
        2,
        5,
        10,
        50,
        500,
        2000,
    ]


def test_reports_under_htmx_return_the_report_region(manager_client, changes):
    response = manager_client.get(REPORTS + "?weeks=3", headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.lstrip().startswith('<div id="report"')
    assert response.headers["HX-Push-Url"].startswith(REPORTS + "?start=")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"start": "last week"}, "Enter a valid date."),
        ({"start": "2026-05-10", "end": "2026-05-01"}, "The end date is before the start date."),
        ({"weeks": "0"}, "greater than or equal to 1"),
        ({"weeks": "500"}, "less than or equal to 104"),
        ({"start": "2001-01-01", "end": "2026-01-01"}, "at most three years"),
    ],
)
def test_bad_report_dates_get_a_message_not_a_server_error(manager_client, params, message):
    for url in (REPORTS, CHANGES_CSV, WEEKLY_CSV):
        response = manager_client.get(url + "?" + urlencode(params))
        assert response.status_code == 422, url
        assert message in response.content.decode(), url


@pytest.mark.parametrize("url", [REPORTS, CHANGES_CSV, WEEKLY_CSV])
def test_specialists_cannot_see_reports_or_their_exports(specialist_client, url):
    assert specialist_client.get(url).status_code == 403
    assert specialist_client.get(url, headers=HTMX).status_code == 403


@pytest.mark.parametrize("url", [REPORTS, CHANGES_CSV, WEEKLY_CSV])
def test_managers_and_the_system_team_can(manager_client, system_client, url):
    assert manager_client.get(url).status_code == 200
    assert system_client.get(url).status_code == 200


@pytest.mark.parametrize("url", [REPORTS, CHANGES_CSV, WEEKLY_CSV])
def test_reports_refuse_post(manager_client, url):
    assert manager_client.post(url).status_code == 405
