"""An MQTT topic filter (aiomqtt): each message's payload, read as JSON, is an event."""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import urlsplit

import aiomqtt

from ..triggerspec import MqttTrigger
from .base import Backoff, Sink

log = logging.getLogger("edgehub.edge.triggers")
MAX_PAYLOAD = 256 * 1024
"""Bigger messages are bad payloads (a trigger's event is a reading or an alarm, not a file)."""


class MqttSource:
    """Subscribes to ``topic`` (QoS 1) and reconnects forever with a capped backoff."""

    def __init__(self, trigger: MqttTrigger, sink: Sink) -> None:
        self.trigger = trigger
        self.sink = sink
        self.connected = False

    def client(self) -> aiomqtt.Client:
        url = urlsplit(self.trigger.broker)
        tls = url.scheme == "mqtts"
        password = os.environ.get(self.trigger.password_env) if self.trigger.password_env else None
        return aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or (8883 if tls else 1883),
            username=self.trigger.username,
            password=password,
            tls_params=aiomqtt.TLSParameters() if tls else None,
            timeout=10,
        )

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                async with self.client() as client:
                    await client.subscribe(self.trigger.topic, qos=1)
                    self.connected = True
                    backoff.reset()
                    async for message in client.messages:
                        await self._take(str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
                log.warning("trigger %s: MQTT %s: %s", self.trigger.id, self.trigger.broker, exc)
            self.connected = False
            await backoff.wait()

    async def _take(self, topic: str, raw: object) -> None:
        if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_PAYLOAD:
            self.sink.bad_payload(f"MQTT message on {topic}: empty or over {MAX_PAYLOAD} bytes")
            return
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.sink.bad_payload(f"MQTT message on {topic} is not JSON: {exc}")
            return
        await self.sink.event(payload, {"topic": topic})
