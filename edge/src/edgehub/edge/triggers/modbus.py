"""A Modbus TCP register or coil, polled (pymodbus's async client): fires on crossing the condition."""

from __future__ import annotations

import asyncio
import logging

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from ..triggerspec import ModbusTrigger
from .base import Sink
from .gate import holds

log = logging.getLogger("edgehub.edge.triggers")


class ModbusSource:
    """Reads ``address`` every ``poll_s``; an event when the condition goes from false (or the first
    reading) to true, none while it stays true. A failed read keeps the last state and is retried."""

    def __init__(self, trigger: ModbusTrigger, sink: Sink) -> None:
        self.trigger = trigger
        self.sink = sink
        self.holding = False
        """Whether the condition held at the last good reading."""
        self.readings = 0

    async def read(self, client: AsyncModbusTcpClient) -> int | bool:
        t = self.trigger
        if t.table == "coil":
            reply = await client.read_coils(t.address, count=1, device_id=t.unit)
        elif t.table == "discrete":
            reply = await client.read_discrete_inputs(t.address, count=1, device_id=t.unit)
        elif t.table == "input":
            reply = await client.read_input_registers(t.address, count=1, device_id=t.unit)
        else:
            reply = await client.read_holding_registers(t.address, count=1, device_id=t.unit)
        if reply.isError():
            raise ModbusException(f"{t.table} {t.address}: {reply}")
        return bool(reply.bits[0]) if t.table in ("coil", "discrete") else int(reply.registers[0])

    async def run(self) -> None:
        t = self.trigger
        assert t.condition is not None
        client = AsyncModbusTcpClient(t.host, port=t.port, timeout=t.timeout_s, retries=0)
        failing = False
        try:
            while True:
                try:
                    if not client.connected and not await client.connect():
                        raise ModbusException(f"cannot connect to {t.host}:{t.port}")
                    value = await self.read(client)
                    failing = False
                except (ModbusException, OSError, TimeoutError) as exc:
                    if not failing:  # once per outage, not every poll
                        log.warning("trigger %s: Modbus read failed: %s", t.id, exc)
                    failing = True
                    client.close()
                else:
                    await self._reading(value)
                await asyncio.sleep(t.poll_s)
        finally:
            client.close()

    async def _reading(self, value: int | bool) -> None:
        c = self.trigger.condition
        assert c is not None
        self.readings += 1
        payload = {"value": value, "address": self.trigger.address}
        now = holds(payload, c.field, c.op, c.value)
        if now and not self.holding:
            await self.sink.event(payload, {"table": self.trigger.table}, checked=True)
        self.holding = now
