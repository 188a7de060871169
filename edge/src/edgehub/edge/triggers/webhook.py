"""A local webhook: ``asyncio.start_server`` speaking HTTP/1.1 through h11 (a sans-I/O parser already
in the tree; no web framework for one endpoint).

``POST <path>`` with ``Authorization: Bearer <token>`` (compared in constant time) and a JSON body of at
most ``max_body_bytes`` is an event; the answer is 202 with ``{"outcome": ..., "agent_id": ...}``.
Refused: a missing or wrong token 401 (before the body is read), another path 404, another method 405,
a bigger body 413, a body that is not JSON 400 (counted as a bad payload). One request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
from pathlib import Path

import h11

from ..triggerspec import WebhookTrigger
from .base import Sink

log = logging.getLogger("edgehub.edge.triggers")
READ_TIMEOUT_S = 10.0
"""A client that sends nothing for this long is cut off."""


def read_token(trigger: WebhookTrigger) -> bytes:
    """The bearer token from ``token_file`` (its first line) or ``token_env``; ValueError when empty."""
    if trigger.token_file is not None:
        text = (
            Path(trigger.token_file).read_text().splitlines()[0] if Path(trigger.token_file).exists() else ""
        )
    else:
        text = os.environ.get(trigger.token_env or "", "")
    if not text.strip():
        where = trigger.token_file or f"${trigger.token_env}"
        raise ValueError(f"trigger {trigger.id}: no webhook token in {where}")
    return text.strip().encode()


class WebhookSource:
    """Serves the endpoint until cancelled; ``port`` is the bound port once listening."""

    def __init__(self, trigger: WebhookTrigger, sink: Sink) -> None:
        self.trigger = trigger
        self.sink = sink
        self.port: int | None = None
        self.listening = asyncio.Event()

    async def run(self) -> None:
        token = read_token(self.trigger)  # checked at start: a trigger without one does not listen
        server = await asyncio.start_server(
            lambda r, w: self._serve(r, w, token), self.trigger.bind, self.trigger.port
        )
        self.port = server.sockets[0].getsockname()[1]
        self.listening.set()
        log.info(
            "trigger %s: webhook on http://%s:%d%s",
            self.trigger.id,
            self.trigger.bind,
            self.port,
            self.trigger.path,
        )
        async with server:
            await server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: bytes) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            status, body = await asyncio.wait_for(self._handle(conn, reader, token), READ_TIMEOUT_S)
        except (TimeoutError, h11.RemoteProtocolError, ConnectionError):
            status, body = 400, {"error": "bad request"}
        with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
            data = json.dumps(body).encode()
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(data))),
                ("connection", "close"),
            ]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=data)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _handle(
        self, conn: h11.Connection, reader: asyncio.StreamReader, token: bytes
    ) -> tuple[int, dict[str, object]]:
        request = await _next(conn, reader)
        if not isinstance(request, h11.Request):
            return 400, {"error": "bad request"}
        headers = {k.decode().lower(): v for k, v in request.headers}
        if not hmac.compare_digest(headers.get("authorization", b""), b"Bearer " + token):
            return 401, {"error": "unauthorized"}
        if request.target.split(b"?")[0].decode() != self.trigger.path:
            return 404, {"error": "no such path"}
        if request.method != b"POST":
            return 405, {"error": "POST only"}
        body = await self._body(conn, reader)
        if body is None:
            return 413, {"error": f"body over {self.trigger.max_body_bytes} bytes"}
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.sink.bad_payload(f"webhook body is not JSON: {exc}")
            return 400, {"error": "the body is not JSON"}
        outcome, agent_id = await self.sink.event(payload, {"path": self.trigger.path})
        return 202, {"outcome": outcome.value, "agent_id": agent_id}

    async def _body(self, conn: h11.Connection, reader: asyncio.StreamReader) -> bytes | None:
        """The request's body, or None once it passes the limit."""
        limit, chunks, size = self.trigger.max_body_bytes, [], 0
        while True:
            event = await _next(conn, reader)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    return None
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise h11.RemoteProtocolError("unexpected end of request")


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    """The next h11 event, reading from the socket as needed."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(16 * 1024))
            continue
        return event
