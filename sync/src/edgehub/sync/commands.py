"""Hub -> edge commands: published to ``edgehub.cmd.<device>``, consumed by that device through its own
durable consumer, acknowledged only after the command's effect is committed at the edge.

A command the edge cannot decode, or whose handler refuses it for good (``MessageRejected``), goes to
the device's dead-letter subject with the reason and is acknowledged; one whose handler fails otherwise
is negatively acknowledged and comes back later (handlers are idempotent by
``command_id`` or by the effect itself, e.g. an agent id that already exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import context as otel_context

from edgehub.protocol import subjects
from edgehub.protocol.ids import InvalidId, check_ids, shown
from edgehub.protocol.times import InvalidTime, check_times
from edgehub.protocol.v1 import commands_pb2

from . import tracing
from .errors import MessageRejected, dead_letter_headers
from .pull import pull_forever
from .streams import MAX_EVENT_BYTES

log = logging.getLogger("edgehub.sync.commands")

COMMAND_SCHEMA_VERSION = 1
Handler = Callable[[commands_pb2.Command], Awaitable[None]]


_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def consumer_name(device_id: str) -> str:
    """The device's durable consumer: ``edge-`` and the id, each ``.`` written ``~`` and any other
    character outside letters, digits, ``_`` and ``-`` written ``=`` and two hex digits per UTF-8 byte.

    Injective over all strings (``~`` and ``=`` stand for nothing else, so the name decodes back to
    one id) and never truncated: a valid device id (``ids.DEVICE_ID_MAX``) gives at most 69 characters,
    far under the server's 255, with no ``.``, ``*``, ``>``, whitespace or path separator. Ids of
    letters, digits, ``_`` and ``-`` keep the names earlier releases gave them."""
    out = []
    for ch in device_id:
        if ch in _PLAIN:
            out.append(ch)
        elif ch == ".":
            out.append("~")
        else:
            out.extend(f"={b:02X}" for b in ch.encode())
    return "edge-" + "".join(out)


def new_command(device_id: str, issued_by: str) -> commands_pb2.Command:
    cmd = commands_pb2.Command(
        schema_version=COMMAND_SCHEMA_VERSION,
        command_id=f"cmd-{uuid.uuid4().hex}",
        device_id=device_id,
        issued_by=issued_by,
    )
    cmd.issued_at.GetCurrentTime()
    return cmd


async def send_command(js: JetStreamContext, command: commands_pb2.Command) -> None:
    """Publish ``command`` durably (waits for the stream's ack), with the current span's trace context
    in its headers (``tracing``): what the edge does with it joins the sender's trace."""
    await js.publish(
        subjects.commands(command.device_id),
        command.SerializeToString(),
        headers=tracing.inject({"Nats-Msg-Id": command.command_id}),
        stream=subjects.COMMANDS_STREAM,
    )


def decode_command(msg: Msg, device_id: str) -> commands_pb2.Command:
    if len(msg.data) > MAX_EVENT_BYTES:
        raise MessageRejected(f"oversized: {len(msg.data)} bytes")
    try:
        cmd = commands_pb2.Command.FromString(msg.data)
    except DecodeError as exc:
        raise MessageRejected(f"malformed: not a Command ({exc})") from None
    if cmd.schema_version != COMMAND_SCHEMA_VERSION:
        raise MessageRejected(f"unknown schema version {cmd.schema_version}")
    if cmd.device_id != device_id or not cmd.command_id or not cmd.WhichOneof("body"):
        who = f"{shown(cmd.device_id)}/{shown(cmd.command_id)}"
        raise MessageRejected(f"not a command for {device_id}: {who}")
    try:
        check_ids(cmd)  # an id the edge would use in a subject, a key or a file name
        check_times(cmd)
    except (InvalidId, InvalidTime) as exc:
        raise MessageRejected(exc.message) from None
    return cmd


class CommandConsumer:
    """One device's command consumer."""

    def __init__(
        self, js: JetStreamContext, device_id: str, handle: Handler, *, retry_delay_s: float = 1.0
    ) -> None:
        self.js = js
        self.device_id = device_id
        self.handle = handle
        self.retry_delay_s = retry_delay_s
        self.applied = 0
        self.rejected = 0

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        return await self.js.pull_subscribe(
            subjects.commands(self.device_id),
            durable=consumer_name(self.device_id),
            stream=subjects.COMMANDS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=30
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        await pull_forever(
            self._subscribe, self._batch, stop, batch=16, log=log, what="commands", retry_s=1.0
        )

    async def _batch(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            await self._one(msg)

    async def _reject(self, msg: Msg, rejected: MessageRejected) -> None:
        log.warning("command rejected: %s", rejected.reason)
        self.rejected += 1
        headers = dead_letter_headers(rejected.reason, msg.subject)
        with contextlib.suppress(Exception):
            await self.js.publish(
                subjects.device_deadletter(self.device_id), msg.data[:MAX_EVENT_BYTES], headers=headers
            )
        await msg.ack()

    async def _one(self, msg: Msg) -> None:
        try:
            cmd = decode_command(msg, self.device_id)
        except MessageRejected as rejected:
            await self._reject(msg, rejected)
            return
        token = otel_context.attach(tracing.extract(msg.headers))  # the sender's span, validated
        try:
            await self.handle(cmd)
        except MessageRejected as rejected:  # the handler refuses it for good (e.g. the device drains)
            await self._reject(msg, rejected)
            return
        except Exception as exc:
            log.warning(
                "command %s failed (%s: %s); retrying later", cmd.command_id, exc.__class__.__name__, exc
            )
            await msg.nak(delay=self.retry_delay_s)
            return
        finally:
            otel_context.detach(token)
        self.applied += 1
        await msg.ack()
