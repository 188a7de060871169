"""A queue served fairly across devices: one FIFO per device, devices taken in turn (round-robin),
each FIFO and the whole queue bounded.

A device that sends a hundred requests gets one answered per round, like every other device waiting,
and once its own FIFO is full its next request is refused at once ("busy") instead of growing the
queue: flooding the hub costs the flooder, never the others.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Per-device FIFOs served round-robin (see the module docstring)."""

    def __init__(self, *, per_device: int, total: int) -> None:
        self.per_device = per_device
        self.total = total
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()
        """Devices with something waiting, in the order they are served next."""
        self._size = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return self._size

    def waiting(self, device_id: str) -> int:
        queue = self._queues.get(device_id)
        return len(queue) if queue is not None else 0

    def put(self, device_id: str, item: T) -> bool:
        """Queue ``item`` for ``device_id``; False (nothing queued) when its FIFO or the queue is full."""
        if self._size >= self.total or self.waiting(device_id) >= self.per_device:
            return False
        self._queues.setdefault(device_id, deque()).append(item)
        self._size += 1
        self._ready.set()
        return True

    def take(self) -> tuple[str, T] | None:
        """The next device's oldest item, that device moved to the back of the round; None if empty."""
        if not self._queues:
            return None
        device_id, queue = next(iter(self._queues.items()))
        item = queue.popleft()
        self._size -= 1
        del self._queues[device_id]
        if queue:
            self._queues[device_id] = queue  # to the back: every other waiting device goes first
        if not self._queues:
            self._ready.clear()
        return device_id, item

    async def get(self) -> tuple[str, T]:
        """``take``, waiting until there is something."""
        while True:
            taken = self.take()
            if taken is not None:
                return taken
            await self._ready.wait()
