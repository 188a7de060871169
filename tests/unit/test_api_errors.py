"""The one mapping of errors to gRPC statuses at the API's edge (``edgehub.hub.api.errors``)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from edgehub.hub.api.errors import STATUS, answers_errors
from edgehub.hub.api.service import SERVICE, HubService
from edgehub.hub.errors import MigrationError, Refused
from edgehub.hub.knowledge.errors import ConsolidationConflict, GraphUnavailable
from edgehub.protocol.errors import EdgehubError, ErrorCode
from edgehub.sync.records import RecordConflict


class Aborted(Exception):
    pass


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def test_every_code_has_the_grpc_status_of_its_name() -> None:
    assert {c.value: s.name for c, s in STATUS.items()} == {c.value: c.value for c in ErrorCode}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (Refused(ErrorCode.NOT_FOUND, "no agent 'x'"), grpc.StatusCode.NOT_FOUND),
        (MigrationError(ErrorCode.ABORTED, "retry"), grpc.StatusCode.ABORTED),
        (RecordConflict("kept changing"), grpc.StatusCode.ABORTED),
        (GraphUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (GraphUnavailable("no password", retryable=False), grpc.StatusCode.FAILED_PRECONDITION),
        (ConsolidationConflict("r", ["e"]), grpc.StatusCode.ABORTED),
        (EdgehubError("a bug"), grpc.StatusCode.INTERNAL),
    ],
)
async def test_an_error_a_method_raises_ends_the_call_with_its_status_and_message(
    error: EdgehubError, status: grpc.StatusCode
) -> None:
    @answers_errors
    async def method(self: Any, request: Any, context: Any) -> None:
        raise error

    with pytest.raises(Aborted) as exc:
        await method(None, None, Context())
    assert exc.value.args == (status, str(error))


def test_every_method_of_the_servicer_answers_errors() -> None:
    for rpc in SERVICE.methods:
        assert getattr(HubService, rpc.name).__wrapped__ is not None, rpc.name
