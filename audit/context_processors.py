from __future__ import annotations

from functools import cached_property

from django.http import HttpRequest

from audit.models import PendingReview


class ReviewQueue:
    """How many risky actions await a manager's review, for the badge in the page header.

    Counted at most once per request, and only when a template asks. The count stops at
    LIMIT: a badge needs no exact figure past it, and the scan stays short however long the
    queue grows.
    """

    LIMIT = 999

    @cached_property
    def count(self) -> int:
        return PendingReview.objects.all()[: self.LIMIT + 1].count()

    @property
    def label(self) -> str:
        return f"{self.LIMIT}+" if self.count > self.LIMIT else str(self.count)


def review_queue(request: HttpRequest) -> dict[str, ReviewQueue]:
    queue = getattr(request, "_review_queue", None)
    if queue is None:
        queue = ReviewQueue()
        request._review_queue = queue  # type: ignore[attr-defined]
    return {"review_queue": queue}
