"""SOAP 1.1 as Marketing Cloud speaks it: reading a request envelope safely, and writing
answers and faults."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lxml import etree

from standins.common.http import Reply

SOAP_PATH = "/Service.asmx"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER_API = "http://exacttarget.com/wsdl/partnerAPI"
FUEL_OAUTH = "http://exacttarget.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
API_FAULT = "urn:fault.partner.exacttarget.com"

SUBSCRIBER_PROPERTIES = (
    "Client.ID",
    "CreatedDate",
    "ID",
    "EmailAddress",
    "SubscriberKey",
    "UnsubscribedDate",
    "Status",
    "EmailTypePreference",
)
# What the stand-in answers for the tracking objects (the documented properties the app
# reads, and a few more); EventDate is the one it filters on.
_EVENT_PROPERTIES = (
    "Client.ID",
    "SendID",
    "BatchID",
    "TriggeredSendDefinitionObjectID",
    "SubscriberKey",
    "EventDate",
    "EventType",
    "EmailAddress",
)
TRACKING_PROPERTIES = {
    "UnsubEvent": _EVENT_PROPERTIES,
    "BounceEvent": (*_EVENT_PROPERTIES, "BounceCategory", "BounceType", "SMTPCode", "SMTPReason"),
}
_EVENT_FIELDS = {
    "SendID": "send_id",
    "BatchID": "batch_id",
    "SubscriberKey": "key",
    "EventDate": "date",
    "EventType": "event_type",
    "EmailAddress": "email",
    "BounceCategory": "bounce_category",
    "BounceType": "bounce_type",
    "SMTPCode": "smtp_code",
    "SMTPReason": "smtp_reason",
}
DATE_OPERATORS = ("greaterThan", "greaterThanOrEqual", "lessThan", "lessThanOrEqual", "between")


def _parser() -> etree.XMLParser:
    # One per call (lxml parsers are not meant to be shared between threads); no DTDs, no
    # entity expansion, no network: the body comes from whoever connects.
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, remove_blank_text=True
    )


def q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def partner(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    return sub(parent, q(PARTNER_API, name), text)


def text_of(element: etree._Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


def local_name(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def xsi_type(element: etree._Element) -> str:
    value = element.get(q(XSI, "type")) or ""
    return value.rpartition(":")[2]


def xml_reply(status: int, data: bytes) -> Reply:
    return Reply(status, data, content_type="text/xml; charset=utf-8")


def html_reply(status: int, title: str) -> Reply:
    # What a load balancer in front of the API answers: not SOAP at all.
    page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
    return Reply(status, page.encode(), content_type="text/html; charset=utf-8")


class SoapFault(Exception):
    """A SOAP 1.1 fault, as Marketing Cloud sends them (always with HTTP 500)."""

    def __init__(self, kind: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # Server, Client or Security
        self.message = message
        self.code = code

    def reply(self, url: str) -> Reply:
        envelope = etree.Element(q(SOAP_ENV, "Envelope"), nsmap={"soap": SOAP_ENV})
        body = sub(envelope, q(SOAP_ENV, "Body"))
        fault = sub(body, q(SOAP_ENV, "Fault"))
        if self.kind == "Security":
            faultcode = etree.SubElement(fault, "faultcode", nsmap={"q0": WSSE})
            faultcode.text = "q0:Security"
        else:
            sub(fault, "faultcode", f"soap:{self.kind}")
        sub(fault, "faultstring", self.message)
        sub(fault, "faultactor", url + SOAP_PATH)
        if self.kind == "Client":
            sub(fault, "detail")  # empty: Client faults carry no error code ("SOAP Faults")
        if self.kind == "Server":
            # Only Server faults carry an API fault structure.
            detail = sub(fault, "detail")
            apifault = etree.SubElement(detail, q(API_FAULT, "apifault"), nsmap={None: API_FAULT})
            sub(apifault, q(API_FAULT, "Code"), str(self.code or 2))
            sub(apifault, q(API_FAULT, "Message"), self.message)
        return xml_reply(500, etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))


@dataclass
class SoapRequest:
    action: str
    token: str
    operation: etree._Element
    message_id: str
    mids: tuple[str, ...]  # business units named in the request (empty: the token's own)


def parse_soap(headers: Mapping[str, str], body: bytes) -> SoapRequest:
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError:
        raise SoapFault("Client", "Server was unable to read request.") from None
    if root.tag != q(SOAP_ENV, "Envelope"):
        raise SoapFault("Client", "The request is not a SOAP 1.1 envelope.")
    header = root.find(q(SOAP_ENV, "Header"))
    soap_body = root.find(q(SOAP_ENV, "Body"))
    operation = soap_body[0] if soap_body is not None and len(soap_body) else None
    if operation is None:
        raise SoapFault("Client", "The SOAP Body is empty.")
    action = headers.get("soapaction", "").strip().strip('"')
    if not action and header is not None:
        action = text_of(header.find(q(WSA, "Action")))
    if not action:
        raise SoapFault("Client", "SOAP Action could not be determined from HTTP or SOAP header.")
    expected = {"Retrieve": "RetrieveRequestMsg", "Update": "UpdateRequest"}.get(action)
    if expected is None or operation.tag != q(PARTNER_API, expected):
        raise SoapFault(
            "Client", f"Server did not recognize the value of HTTP Header SOAPAction: {action}."
        )
    token = text_of(header.find(q(FUEL_OAUTH, "fueloauth"))) if header is not None else ""
    message_id = text_of(header.find(q(WSA, "MessageID"))) if header is not None else ""
    if action == "Retrieve":
        named = operation.iterfind(
            f"{q(PARTNER_API, 'RetrieveRequest')}/{q(PARTNER_API, 'ClientIDs')}"
            f"/{q(PARTNER_API, 'ClientID')}"
        )
    else:
        named = operation.iterfind(
            f"{q(PARTNER_API, 'Objects')}/{q(PARTNER_API, 'Client')}/{q(PARTNER_API, 'ID')}"
        )
    mids = tuple(dict.fromkeys(text_of(element) for element in named if text_of(element)))
    return SoapRequest(action, token, operation, message_id, mids)


def filter_keys(element: etree._Element | None) -> list[str] | str | None:
    """The keys a Filter asks for, None for no filter, or the error to answer."""
    if element is None:
        return None
    if xsi_type(element) != "SimpleFilterPart":
        return "The stand-in filters with a SimpleFilterPart only"
    prop = text_of(element.find(q(PARTNER_API, "Property")))
    operator = text_of(element.find(q(PARTNER_API, "SimpleOperator")))
    values = [text_of(v) for v in element.findall(q(PARTNER_API, "Value"))]
    if prop != "SubscriberKey":
        return f"The stand-in filters on SubscriberKey only, not {prop!r}"
    if operator == "equals" and len(values) == 1:
        return values
    if operator == "IN" and values:
        return list(dict.fromkeys(values))
    return f"SimpleOperator {operator!r} with {len(values)} values is not supported"


def date_filter(element: etree._Element | None) -> tuple[str, list[str]] | str | None:
    """(operator, values) of a Filter on EventDate, None for no filter, or the error to
    answer. The dates may come as DateValue or Value."""
    if element is None:
        return None
    if xsi_type(element) != "SimpleFilterPart":
        return "The stand-in filters with a SimpleFilterPart only"
    prop = text_of(element.find(q(PARTNER_API, "Property")))
    operator = text_of(element.find(q(PARTNER_API, "SimpleOperator")))
    values = [text_of(v) for v in element.findall(q(PARTNER_API, "DateValue"))] or [
        text_of(v) for v in element.findall(q(PARTNER_API, "Value"))
    ]
    if prop != "EventDate":
        return f"The stand-in filters tracking events on EventDate only, not {prop!r}"
    if operator not in DATE_OPERATORS or len(values) != (2 if operator == "between" else 1):
        return f"SimpleOperator {operator!r} with {len(values)} values is not supported"
    return operator, values


def tracking_result(
    parent: etree._Element, event: Mapping[str, Any], properties: Sequence[str]
) -> None:
    result = partner(parent, "Results")
    result.set(q(XSI, "type"), event["object"])
    wanted = set(properties)
    if "Client.ID" in wanted:
        client = partner(result, "Client")
        partner(client, "ID", event["mid"])
    partner(result, "PartnerKey").set(q(XSI, "nil"), "true")
    partner(result, "ObjectID").set(q(XSI, "nil"), "true")
    for name in properties:
        field = _EVENT_FIELDS.get(name)
        if field is not None and event.get(field):
            partner(result, name, str(event[field]))
    if "TriggeredSendDefinitionObjectID" in wanted:
        # Commercial sends: no triggered send definition.
        partner(result, "TriggeredSendDefinitionObjectID").set(q(XSI, "nil"), "true")


def subscriber_result(
    parent: etree._Element, record: Mapping[str, Any], properties: Sequence[str]
) -> None:
    result = partner(parent, "Results")
    result.set(q(XSI, "type"), "Subscriber")
    wanted = set(properties)
    if "Client.ID" in wanted:
        client = partner(result, "Client")
        partner(client, "ID", record["mid"])
    partner(result, "PartnerKey").set(q(XSI, "nil"), "true")
    if "CreatedDate" in wanted:
        partner(result, "CreatedDate", record["created"])
    if "ID" in wanted:
        partner(result, "ID", str(record["id"]))
    partner(result, "ObjectID").set(q(XSI, "nil"), "true")
    if "EmailAddress" in wanted:
        partner(result, "EmailAddress", record["email"])
    if "SubscriberKey" in wanted:
        partner(result, "SubscriberKey", record["key"])
    if "UnsubscribedDate" in wanted and record.get("unsubscribed"):
        partner(result, "UnsubscribedDate", record["unsubscribed"])
    if "Status" in wanted:
        partner(result, "Status", record["status"])
    if "EmailTypePreference" in wanted:
        partner(result, "EmailTypePreference", "HTML")


def envelope(answer: etree._Element, request: SoapRequest) -> bytes:
    root = etree.Element(
        q(SOAP_ENV, "Envelope"),
        nsmap={"soap": SOAP_ENV, "xsi": XSI, "wsa": WSA, "wsse": WSSE, "wsu": WSU},
    )
    header = sub(root, q(SOAP_ENV, "Header"))
    sub(header, q(WSA, "Action"), f"{request.action}Response")
    sub(header, q(WSA, "MessageID"), f"urn:uuid:{uuid.uuid4()}")
    if request.message_id:
        sub(header, q(WSA, "RelatesTo"), request.message_id)
    sub(header, q(WSA, "To"), "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous")
    security = sub(header, q(WSSE, "Security"))
    stamp = sub(security, q(WSU, "Timestamp"))
    now = datetime.now(UTC)
    sub(stamp, q(WSU, "Created"), now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    sub(stamp, q(WSU, "Expires"), (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    body = sub(root, q(SOAP_ENV, "Body"))
    body.append(answer)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))
