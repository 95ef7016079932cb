"""Every PostgreSQL advisory lock the app takes, in one place.

Advisory locks share one number space per database: two features that picked the same
number would block (or deadlock) each other without either knowing. An IntEnum marked
@unique refuses a duplicate value at import, so a collision cannot be written.
"""

from __future__ import annotations

from enum import IntEnum, unique


@unique
class AdvisoryLock(IntEnum):
    # apply_change holds it shared for its whole transaction; the Ascend export takes it
    # exclusively for an instant to read the newest audit id, so every change up to that id
    # has committed (docs/design.md, "The nightly Ascend file").
    CHANGE_WINDOW = 7_310_001
    # The audit hash chain: the deferred seal trigger takes it at COMMIT for an instant. The
    # value is compiled into that trigger (audit/migrations/0004), so it must not change.
    AUDIT_SEAL = 7_310_002
    # One Ascend export at a time, held (session-level) for the whole run including the
    # upload. It must never be a lock that committing changes also take.
    ASCEND_EXPORT = 7_310_003
    # One reconciliation at a time, for its whole run (session-level): two would read the
    # same systems twice and race on the same discrepancies.
    RECONCILE = 7_310_004
