"""Dates staff type into filters and forms, kept within years the app can compute with.

A date at the ends of the calendar (0001-01-01, 9999-12-31) overflows as soon as a day is
added to it or it is turned into a local time; nothing the app holds is older than this
century, so anything outside these years is a typing slip, answered with a message.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from django import forms

EARLIEST = date(2000, 1, 1)
LATEST = date(2100, 12, 31)
OUT_OF_RANGE = "Choose a date between 1 Jan 2000 and 31 Dec 2100."


def in_range(value: date | datetime) -> bool:
    day = value.date() if isinstance(value, datetime) else value
    return EARLIEST <= day <= LATEST


class StaffDateField(forms.DateField):
    def to_python(self, value: Any) -> date | None:
        day = super().to_python(value)
        if day is not None and not in_range(day):
            raise forms.ValidationError(OUT_OF_RANGE, code="out_of_range")
        return day


class StaffDateTimeField(forms.DateTimeField):
    def to_python(self, value: Any) -> datetime | None:
        # Making the value aware in the current time zone is what overflows at the ends.
        try:
            parsed = super().to_python(value)
        except OverflowError:
            raise forms.ValidationError(OUT_OF_RANGE, code="out_of_range") from None
        if parsed is not None and not in_range(parsed):
            raise forms.ValidationError(OUT_OF_RANGE, code="out_of_range")
        return parsed
