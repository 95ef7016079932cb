"""Salesforce's shapes for saying no, as the REST API Developer Guide shows them ("Status
Codes and Error Responses"; "sObject Collections"): a whole call (``[{"message",
"errorCode"}]``, a validation rule's with its ``fields``) and one record of a collection
(``{"id", "success", "errors": [{"statusCode", "message", "fields"}]}``)."""

from __future__ import annotations

from typing import Any

from standins.common.http import Reply
from standins.salesforce.store import RecordError


class Refusal(Exception):
    """An error answer to a whole call, raised anywhere a request is being answered."""

    def __init__(
        self, status: int, code: str, message: str, fields: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields  # named only where Salesforce names them (a validation rule)

    def reply(self) -> Reply:
        error: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            error["fields"] = self.fields
        return Reply(self.status, [error])


NOT_FOUND = (404, "NOT_FOUND", "The requested resource does not exist")

HALTED = Refusal(
    400,
    "PROCESSING_HALTED",
    "The transaction was rolled back since another operation in the same transaction failed.",
)

ROLLED_BACK: RecordError = (
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using "
    "AllOrNone header",
    [],
)


def record_result(
    record_id: str | None, error: RecordError | None, created: bool | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": record_id,
        "success": error is None,
        "errors": []
        if error is None
        else [{"statusCode": error[0], "message": error[1], "fields": error[2]}],
    }
    if created is not None:
        result["created"] = created
    return result
