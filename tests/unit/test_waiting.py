"""``until_stopped``: the result, the error, or Stopped with the work cancelled."""

from __future__ import annotations

import asyncio

import pytest

from edgehub.sync import Stopped, until_stopped


async def test_the_result_comes_back_when_the_work_ends_first() -> None:
    assert await until_stopped(asyncio.sleep(0, "done"), asyncio.Event()) == "done"


async def test_the_works_own_error_propagates() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await until_stopped(fail(), asyncio.Event())


async def test_a_stop_cancels_the_work_and_raises_stopped() -> None:
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()

    asyncio.get_running_loop().call_later(0.05, stop.set)
    with pytest.raises(Stopped):
        await until_stopped(forever(), stop)
    assert cancelled.is_set()  # nothing outlives the call


async def test_an_already_set_stop_stops_at_once() -> None:
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(Stopped):
        await until_stopped(asyncio.sleep(3600), stop)
