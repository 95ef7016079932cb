"""How the log names what features recorded in it, as the features tell it.

audit imports no feature (docs/design.md, "Layers"), yet a change's snapshot holds email
category keys that staff should read as names. The app that owns the categories gives the
log a function for them when it is ready (preferences/apps.py).
"""

from __future__ import annotations

from collections.abc import Callable

_category_names: Callable[[], dict[str, str]] = dict


def name_categories_with(provider: Callable[[], dict[str, str]]) -> None:
    """provider() returns {key: name} for every email category, in display order."""
    global _category_names
    _category_names = provider


def category_names() -> dict[str, str]:
    return _category_names()
