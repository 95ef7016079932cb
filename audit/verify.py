"""Walk the audit log's hash chain and report the first place it does not hold.

Each seal's hash is SHA-256(previous seal's hash + the entry's canonical text), where the
canonical text is rendered by PostgreSQL's audit_entry_canonical(), the same function the
seal trigger uses. An entry altered, removed or slipped in with the triggers disabled
breaks the chain at that entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.db import connection, transaction

# Rows fetched per round trip from the server-side cursor: the log may hold tens of millions.
FETCH_SIZE = 5_000


@dataclass(frozen=True)
class Problem:
    entry_id: int | None
    seq: int | None
    message: str


@dataclass
class ChainReport:
    checked: int = 0
    head_seq: int = 0
    head_hash: str = ""
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _link(previous_hash: str, canonical: str) -> str:
    return hashlib.sha256((previous_hash + canonical).encode()).hexdigest()


def _sealed_rows() -> Iterator[tuple[int, int, str, int | None, str | None]]:
    with connection.chunked_cursor() as cursor:
        cursor.execute(
            """
            SELECT s.seq, s.entry_id, s.hash, e.id, audit_entry_canonical(e)
            FROM audit_auditseal s
            LEFT JOIN audit_auditentry e ON e.id = s.entry_id
            ORDER BY s.seq
            """
        )
        while rows := cursor.fetchmany(FETCH_SIZE):
            yield from rows


def verify_chain(*, limit: int = 20) -> ChainReport:
    """Check every seal in order, then look for entries without a seal.

    Stops collecting after `limit` problems; the first one is where tampering begins.
    """
    report = ChainReport()
    previous_hash = ""
    expected_seq = 1
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            # One snapshot for the whole walk, so entries committing meanwhile are either
            # seen with their seals or not at all.
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for seq, sealed_id, stored_hash, entry_id, canonical in _sealed_rows():
            report.checked += 1
            if seq != expected_seq:
                report.problems.append(
                    Problem(
                        sealed_id,
                        seq,
                        f"seals {expected_seq} to {seq - 1} are missing before entry "
                        f"#{sealed_id}: entries were removed with their seals",
                    )
                )
            if entry_id is None or canonical is None:
                report.problems.append(
                    Problem(sealed_id, seq, f"entry #{sealed_id} was removed from the log")
                )
            elif _link(previous_hash, canonical) != stored_hash:
                report.problems.append(
                    Problem(
                        sealed_id,
                        seq,
                        f"entry #{sealed_id} does not match its seal: it or its seal was "
                        "altered after it was written",
                    )
                )
            previous_hash = stored_hash
            expected_seq = seq + 1
            report.head_seq, report.head_hash = seq, stored_hash
            if len(report.problems) >= limit:
                return report

        # Seals are written in the entry's own transaction, so every visible entry has one.
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT e.id FROM audit_auditentry e
                WHERE NOT EXISTS (SELECT 1 FROM audit_auditseal s WHERE s.entry_id = e.id)
                ORDER BY e.id
                LIMIT %s
                """,
                [limit - len(report.problems)],
            )
            for (entry_id,) in cursor.fetchall():
                report.problems.append(
                    Problem(
                        entry_id,
                        None,
                        f"entry #{entry_id} has no seal: it was written past the triggers",
                    )
                )
    return report
