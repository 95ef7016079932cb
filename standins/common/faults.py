"""One fault model for every stand-in: rules that make matching requests stall or fail.

A rule lasts a number of requests (``times``), a number of seconds, until a callable says
so, or until cleared. Delay kinds hold a request before it is answered; every other kind is
an error answer, which each stand-in renders in its own protocol's shape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

DELAY_KINDS = frozenset({"latency", "timeout"})
DEFAULT_DELAY = {"latency": 1.0, "timeout": 60.0}


@dataclass
class FaultRule:
    id: int
    kind: str
    seconds: float  # how long a delay kind holds the request
    times: int | None  # requests left to hit; None: no count
    deadline: float | None  # time.monotonic() at which it ends
    until: Callable[[], bool] | None
    path_contains: str | None

    # Fields a subclass adds to narrow where it applies: the control API passes them
    # through from JSON and describe() lists them.
    filters: ClassVar[tuple[str, ...]] = ()

    def active(self) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return not (self.until is not None and self.until())

    def in_default_scope(self, path: str) -> bool:
        """Where a rule without ``path_contains`` applies. A stand-in narrows this to its
        API, sparing the token endpoint: "the next call fails" means the next API call."""
        return True

    def matches(self, path: str) -> bool:
        if self.path_contains is None:
            return self.in_default_scope(path)
        return self.path_contains in path

    def describe(self) -> dict[str, Any]:
        described = {
            "id": self.id,
            "kind": self.kind,
            "seconds": self.seconds,
            "times": self.times,
            "path_contains": self.path_contains,
        }
        described.update((name, getattr(self, name)) for name in self.filters)
        return described


Rule = TypeVar("Rule", bound=FaultRule)


class FaultBook(Generic[Rule]):
    """The rules in force, in the order they were added; the first that matches is taken."""

    def __init__(
        self,
        rule: type[Rule],
        kinds: Collection[str],
        lock: threading.RLock | None = None,
    ) -> None:
        self.rule = rule
        self.kinds = frozenset(kinds)
        # Give it the stand-in's lock: an until() callable may well read the stand-in, and
        # two locks taken in either order could deadlock.
        self._lock = lock or threading.RLock()
        self._rules: list[Rule] = []
        self._ids = 0  # not reset by clear(): an id names one rule for the process's life

    def add(
        self,
        kind: str,
        *,
        times: int | None = None,
        until: Callable[[], bool] | None = None,
        for_seconds: float | None = None,
        seconds: float | None = None,
        path_contains: str | None = None,
        **filters: Any,
    ) -> int:
        """Add a rule and return its id; ``filters`` are the rule class's extra fields."""
        if kind not in self.kinds:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(self.kinds)}")
        unknown = set(filters) - set(self.rule.filters)
        if unknown:
            raise TypeError(f"unknown fault filter(s): {', '.join(sorted(unknown))}")
        with self._lock:
            self._ids += 1
            self._rules.append(
                self.rule(
                    id=self._ids,
                    kind=kind,
                    seconds=seconds if seconds is not None else DEFAULT_DELAY.get(kind, 0.0),
                    times=times,
                    deadline=time.monotonic() + for_seconds if for_seconds is not None else None,
                    until=until,
                    path_contains=path_contains,
                    **filters,
                )
            )
            return self._ids

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.describe() for rule in self._rules if rule.active()]

    def take(
        self,
        kinds: Collection[str],
        path: str,
        where: Callable[[Rule], bool] | None = None,
    ) -> Rule | None:
        """The first active rule of one of these kinds that matches the request, with one
        of its ``times`` spent; None if there is none. ``where`` checks a subclass's
        filters."""
        with self._lock:
            self._rules = [rule for rule in self._rules if rule.active()]
            for rule in self._rules:
                if rule.kind in kinds and rule.matches(path) and (where is None or where(rule)):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
            return None
