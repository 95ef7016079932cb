"""The HTTP plumbing the protocol stand-ins share: one reply type and the request handler
that hands each request to the stand-in and writes its answer."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from standins.tls import TLSRequestHandler, TLSServer


@dataclass
class Reply:
    """One HTTP answer. ``body`` is JSON data (the stand-in encodes it) or bytes sent as
    they are, with ``content_type``."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


class Responder(Protocol):
    """Who answers the requests: an HttpStandIn."""

    def handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | None: ...

    def encode(self, reply: Reply) -> tuple[bytes, str]: ...


class StandInServer(TLSServer):
    def __init__(
        self,
        address: tuple[str, int],
        standin: Responder,
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
    ) -> None:
        self.standin = standin
        super().__init__(address, handler, context)


class StandInHandler(TLSRequestHandler):
    """Answers GET, POST and DELETE; a stand-in whose protocol has more methods adds them."""

    server: StandInServer

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.answer()

    def do_DELETE(self) -> None:
        self.answer()

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        standin = self.server.standin
        reply = standin.handle(self.command, self.path, headers, body)
        if reply is None:  # the stand-in is stopping while this request was held
            self.close_connection = True
            return
        data, content_type = standin.encode(reply)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", content_type)
            if reply.status != 204:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout fault, or a test that moved on)
            self.close_connection = True
