"""The Marketing Cloud stand-in's tracking events: Retrieve of UnsubEvent and BounceEvent,
filtered on EventDate, per business unit, in pages continued with ContinueRequest.

Own envelopes, as in test_marketing_cloud_standin.py, so a connector bug cannot hide a
stand-in bug behind it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

from standins.marketing_cloud import (
    CHILD_MIDS,
    PARENT_MID,
    MarketingCloudStandIn,
    running_standin,
    standin_process,
)
from tests.standins.test_marketing_cloud_standin import NS, _overall, _soap, _token, _xml

ALUMNI, ATHLETICS = CHILD_MIDS
KEY = "003Dn0000000001IAA"
OTHER = "003Dn0000000002IAA"
NOON = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)  # 12:00 in Marketing Cloud's server time
BOUNCE_PROPERTIES = (
    "Client.ID",
    "SendID",
    "SubscriberKey",
    "EventDate",
    "EventType",
    "BounceCategory",
    "SMTPCode",
)


@pytest.fixture
def standin() -> Iterator[MarketingCloudStandIn]:
    with running_standin(page_size=2) as server:
        yield server


def _events_body(
    object_type: str,
    mids: list[str] | None = None,
    *,
    after: str | None = None,
    operator: str = "greaterThan",
    properties: tuple[str, ...] = ("Client.ID", "SubscriberKey", "EventDate", "EventType"),
    element: str = "DateValue",
) -> str:
    client_ids = "".join(f"<ClientIDs><ClientID>{m}</ClientID></ClientIDs>" for m in mids or [])
    props = "".join(f"<Properties>{name}</Properties>" for name in properties)
    condition = ""
    if after is not None:
        condition = (
            '<Filter xsi:type="SimpleFilterPart"><Property>EventDate</Property>'
            f"<SimpleOperator>{operator}</SimpleOperator><{element}>{after}</{element}></Filter>"
        )
    return (
        '<RetrieveRequestMsg xmlns="http://exacttarget.com/wsdl/partnerAPI">'
        f"<RetrieveRequest>{client_ids}<ObjectType>{object_type}</ObjectType>{props}"
        f"{condition}</RetrieveRequest></RetrieveRequestMsg>"
    )


def _continue_body(request_id: str) -> str:
    return (
        '<RetrieveRequestMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><RetrieveRequest>'
        f"<ContinueRequest>{request_id}</ContinueRequest></RetrieveRequest></RetrieveRequestMsg>"
    )


def _events(response: requests.Response) -> list[dict[str, str]]:
    root = _xml(response)
    found = []
    for result in root.iterfind(".//p:RetrieveResponseMsg/p:Results", NS):
        event = {"type": result.get("{http://www.w3.org/2001/XMLSchema-instance}type", "")}
        for child in result:
            name = child.tag.rpartition("}")[2]
            if name == "Client":
                event["Client.ID"] = child.findtext("p:ID", namespaces=NS) or ""
            elif child.text:
                event[name] = child.text
        found.append(event)
    return found


def _request_id(response: requests.Response) -> str:
    return str(_xml(response).findtext(".//p:RequestID", namespaces=NS))


def test_bounce_events_come_back_per_business_unit_after_the_date_in_server_time(standin):
    standin.add_tracking_event("BounceEvent", ALUMNI, KEY, "a@example.edu", NOON, send_id=7)
    standin.add_tracking_event(
        "BounceEvent",
        ALUMNI,
        OTHER,
        event_date=NOON + timedelta(minutes=5),
        bounce_category="Soft bounce",
        smtp_code="452",
    )
    standin.add_tracking_event("BounceEvent", ALUMNI, OTHER, event_date=NOON - timedelta(hours=1))
    standin.add_tracking_event("BounceEvent", ATHLETICS, KEY, event_date=NOON)
    standin.add_tracking_event("UnsubEvent", ALUMNI, KEY, event_date=NOON)
    token = _token(standin)["access_token"]

    body = _events_body(
        "BounceEvent", [ALUMNI], after="2026-11-30T11:30:00.000", properties=BOUNCE_PROPERTIES
    )
    response = _soap(standin, "Retrieve", body, token)

    assert _overall(response) == "OK"
    assert _events(response) == [
        {
            "type": "BounceEvent",
            "Client.ID": ALUMNI,
            "SendID": "7",
            "SubscriberKey": KEY,
            "EventDate": "2026-11-30T12:00:00.000",  # no zone: Marketing Cloud's server time
            "EventType": "HardBounce",
            "BounceCategory": "Hard bounce",
        },
        {
            "type": "BounceEvent",
            "Client.ID": ALUMNI,
            "SendID": "0",
            "SubscriberKey": OTHER,
            "EventDate": "2026-11-30T12:05:00.000",
            "EventType": "SoftBounce",
            "BounceCategory": "Soft bounce",
            "SMTPCode": "452",
        },
    ]


def test_unsubscribes_are_their_own_object_and_greater_than_excludes_the_date(standin):
    standin.add_tracking_event("UnsubEvent", ATHLETICS, KEY, "k@example.edu", NOON)
    standin.add_tracking_event("UnsubEvent", ATHLETICS, OTHER, event_date=NOON + timedelta(1))
    standin.add_tracking_event("BounceEvent", ATHLETICS, KEY, event_date=NOON + timedelta(1))
    token = _token(standin)["access_token"]

    after_first = _soap(
        standin,
        "Retrieve",
        _events_body("UnsubEvent", [ATHLETICS], after="2026-11-30T12:00:00.000"),
        token,
    )
    from_first = _soap(
        standin,
        "Retrieve",
        _events_body(
            "UnsubEvent",
            [ATHLETICS],
            after="2026-11-30T18:00:00Z",  # a zone given: the same instant
            operator="greaterThanOrEqual",
            properties=("SubscriberKey", "EmailAddress", "EventType"),
            element="Value",
        ),
        token,
    )

    assert [e["SubscriberKey"] for e in _events(after_first)] == [OTHER]
    assert _events(from_first)[0] == {
        "type": "UnsubEvent",
        "SubscriberKey": KEY,
        "EmailAddress": "k@example.edu",
        "EventType": "Unsubscribe",
    }
    assert len(_events(from_first)) == 2


def test_more_than_a_page_is_continued_with_continue_request_until_ok(standin):
    for minute in range(5):
        standin.add_tracking_event(
            "BounceEvent", PARENT_MID, f"003Dn00000000{minute:02d}IAA", event_date=NOON
        )
    token = _token(standin)["access_token"]

    first = _soap(standin, "Retrieve", _events_body("BounceEvent", [PARENT_MID]), token)
    second = _soap(standin, "Retrieve", _continue_body(_request_id(first)), token)
    third = _soap(standin, "Retrieve", _continue_body(_request_id(second)), token)
    again = _soap(standin, "Retrieve", _continue_body(_request_id(second)), token)

    assert [_overall(r) for r in (first, second, third)] == ["MoreDataAvailable"] * 2 + ["OK"]
    keys = [e["SubscriberKey"] for r in (first, second, third) for e in _events(r)]
    assert keys == [f"003Dn00000000{n:02d}IAA" for n in range(5)]
    assert _overall(again).startswith("Error: ContinueRequest")  # each page is answered once


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        (
            _events_body("BounceEvent", properties=("SubscriberKey", "Status")),
            "Error: The Request Property(s) Status do not match with the fields of BounceEvent",
        ),
        (
            _events_body("UnsubEvent", properties=("BounceCategory",)),
            "Error: The Request Property(s) BounceCategory",
        ),
        (
            _events_body("BounceEvent", after="x").replace(
                ">EventDate</Property>", ">SendID</Property>"
            ),
            "Error: The stand-in filters tracking events on EventDate only",
        ),
        (_events_body("BounceEvent", after="soon"), "Error: Invalid date in the filter"),
        (_events_body("BounceEvent", ["999999"], after="2026-11-30"), "Error: Invalid ClientID"),
        (_continue_body("no-such-request"), "Error: ContinueRequest no-such-request is unknown"),
    ],
    ids=[
        "subscriber-property",
        "bounce-property-on-unsub",
        "other-filter",
        "bad-date",
        "mid",
        "continue",
    ],
)
def test_a_tracking_retrieve_it_cannot_answer_has_an_error_overall_status(
    standin, operation, message
):
    token = _token(standin)["access_token"]

    response = _soap(standin, "Retrieve", operation, token)

    assert response.status_code == 200
    assert _overall(response).startswith(message)


def test_a_fault_fails_a_tracking_retrieve_like_any_other(standin):
    standin.add_tracking_event("BounceEvent", ALUMNI, KEY, event_date=NOON)
    standin.fail("server_fault", times=1, action="Retrieve", mid=ALUMNI)
    token = _token(standin)["access_token"]
    body = _events_body("BounceEvent", [ALUMNI])

    failed = _soap(standin, "Retrieve", body, token)
    retried = _soap(standin, "Retrieve", body, token)

    assert failed.status_code == 500
    assert len(_events(retried)) == 1


def test_tracking_events_are_checked_before_any_is_added(standin):
    with pytest.raises(ValueError, match="object is one of"):
        standin.add_tracking_event("ClickEvent", ALUMNI, KEY)
    with pytest.raises(ValueError, match="bounce_category"):
        standin.add_tracking_event("BounceEvent", ALUMNI, KEY, bounce_category="Hard")
    with pytest.raises(ValueError, match="not one of this account's"):
        standin.add_tracking_event("UnsubEvent", "999999", KEY)

    assert standin.tracking_events() == []


def test_a_reset_forgets_tracking_events(standin):
    standin.add_tracking_event("UnsubEvent", ALUMNI, KEY)

    standin.reset()

    assert standin.tracking_events() == []


def test_a_client_adds_tracking_events_over_https_and_the_state_file_keeps_them(tmp_path):
    args = ["--state-file", str(tmp_path / "marketing-cloud.json")]
    with standin_process(args=args) as remote:
        remote.add_tracking_event(
            "BounceEvent", ALUMNI, KEY, "a@example.edu", NOON, bounce_category="Block bounce"
        )
        remote.add_tracking_event("UnsubEvent", ATHLETICS, OTHER, event_date="2026-11-30T12:00")
    with standin_process(args=args) as remote:
        kept = remote.tracking_events()

    assert [(e["object"], e["mid"], e["key"], e["date"], e["event_type"]) for e in kept] == [
        ("BounceEvent", ALUMNI, KEY, "2026-11-30T12:00:00.000", "SoftBounce"),
        ("UnsubEvent", ATHLETICS, OTHER, "2026-11-30T12:00:00.000", "Unsubscribe"),
    ]
    assert kept[0]["bounce_category"] == "Block bounce"
