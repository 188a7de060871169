"""Fakes of the fuzz harnesses (the in-memory JetStream is ``edgehub.sync.fake``)."""

from __future__ import annotations

from typing import NoReturn

import grpc


class Aborted(Exception):
    """``FakeContext.abort``: the call ended with ``code`` (as ``grpc.aio`` ends it by raising)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    """The part of ``grpc.aio.ServicerContext`` the API's servicer and interceptor use, for a caller
    with no client certificate."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Aborted(code, details)

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}
