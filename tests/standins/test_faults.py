"""The fault model every stand-in shares: how rules are added, matched, spent and ended."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest

from standins.common.faults import DELAY_KINDS, FaultBook, FaultRule

KINDS = {"latency", "timeout", "http_500", "http_503"}


class ApiOnly(FaultRule):
    def in_default_scope(self, path: str) -> bool:
        return path.startswith("/api/")


@dataclass
class Narrowed(FaultRule):
    action: str | None = None

    filters: ClassVar[tuple[str, ...]] = ("action",)


def test_a_rule_is_spent_one_request_at_a_time_and_the_first_match_wins():
    book = FaultBook(FaultRule, KINDS)
    first = book.add("http_500", times=2)
    book.add("http_503", times=1)

    taken = [book.take({"http_500", "http_503"}, "/x") for _ in range(4)]

    assert [rule.id if rule else None for rule in taken] == [first, first, first + 1, None]


def test_delay_kinds_are_taken_apart_from_error_kinds_and_default_their_seconds():
    book = FaultBook(FaultRule, KINDS)
    book.add("http_500")
    book.add("timeout")

    delay = book.take(DELAY_KINDS, "/x")

    assert delay is not None
    assert (delay.kind, delay.seconds) == ("timeout", 60.0)
    assert book.take(DELAY_KINDS, "/x") is delay  # no count: it lasts until cleared


def test_without_a_path_filter_a_rule_keeps_to_its_default_scope():
    book = FaultBook(ApiOnly, KINDS)
    book.add("http_503")
    book.add("http_500", path_contains="/token")

    assert book.take(KINDS, "/token").kind == "http_500"
    assert book.take(KINDS, "/api/contacts").kind == "http_503"
    assert book.take(KINDS, "/elsewhere") is None


def test_a_rule_ends_after_its_seconds_or_when_its_condition_holds():
    book = FaultBook(FaultRule, KINDS)
    recovered = threading.Event()
    book.add("http_500", for_seconds=0.1)
    book.add("http_503", until=recovered.is_set)

    assert [rule["kind"] for rule in book.describe()] == ["http_500", "http_503"]
    time.sleep(0.15)
    recovered.set()

    assert book.describe() == []
    assert book.take(KINDS, "/x") is None


def test_a_subclass_narrows_with_its_own_filters_and_describes_them():
    book = FaultBook(Narrowed, KINDS)
    book.add("http_500", action="Update")

    assert book.take(KINDS, "/x", lambda rule: rule.action in (None, "Retrieve")) is None
    assert book.take(KINDS, "/x", lambda rule: rule.action in (None, "Update")) is not None
    assert book.describe()[0]["action"] == "Update"
    with pytest.raises(TypeError, match="mid"):
        book.add("http_500", mid="1")


def test_an_unknown_kind_is_refused_and_clearing_keeps_ids_unique():
    book = FaultBook(FaultRule, KINDS)
    with pytest.raises(ValueError, match="unknown fault kind 'nope'"):
        book.add("nope")

    first = book.add("latency")
    book.clear()

    assert book.describe() == []
    assert book.add("latency") == first + 1
