"""CSV downloads streamed row by row, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

from django.db import transaction
from django.http import StreamingHttpResponse

from lib.spreadsheet import safe_row

# Rows fetched per round trip from the server-side cursor, and CSV lines per chunk sent.
FETCH_ROWS = 2000
LINES_PER_CHUNK = 500


class _Echo:
    """csv.writer writes into this and gets the line back, so nothing accumulates."""

    def write(self, value: str) -> str:
        return value


def _lines(header: list[str], rows: Iterable[list[object]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    # The byte order mark makes Excel read the file as UTF-8 (names with accents).
    yield "\ufeff" + writer.writerow(header)
    # In a transaction, QuerySet.iterator() reads through a plain server-side cursor; outside
    # one (autocommit) psycopg would declare it WITH HOLD, and PostgreSQL would then
    # materialise the whole result before sending the first row.
    with transaction.atomic():
        chunk: list[str] = []
        for row in rows:
            chunk.append(writer.writerow(safe_row(row)))
            if len(chunk) >= LINES_PER_CHUNK:
                yield "".join(chunk)
                chunk = []
        if chunk:
            yield "".join(chunk)


def stream_csv(
    filename: str, header: list[str], rows: Iterable[list[object]]
) -> StreamingHttpResponse:
    """A download of header + rows; rows should come from QuerySet.iterator(FETCH_ROWS)."""
    response = StreamingHttpResponse(_lines(header, rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
