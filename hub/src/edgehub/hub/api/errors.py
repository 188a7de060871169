"""The one mapping of errors to gRPC statuses, at the API's edge: an ``EdgehubError`` a service raises
ends the call with the status named by its ``code`` and its message as the details. Services and
servicer methods never name a gRPC status.

``maps_errors`` is a class decorator for a servicer: it wraps every method of the gRPC service the
class implements (mixins included, e.g. ``GoalsApi``), so each method just calls its service.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from edgehub.protocol.errors import EdgehubError, ErrorCode
from edgehub.protocol.ids import check_ids

C = TypeVar("C", bound=type)
Method = Callable[[Any, Any, Any], Awaitable[Any]]

STATUS = {code: grpc.StatusCode[code.value] for code in ErrorCode}
"""The canonical code -> its gRPC status (of the same name)."""


def status_of(exc: EdgehubError) -> grpc.StatusCode:
    return STATUS.get(exc.code, grpc.StatusCode.INTERNAL)


TOKEN_NAMES = frozenset({"CreateApiTokenRequest", "DeleteApiTokensRequest"})
"""Requests whose ``name`` is an API token's name (an id too)."""


def check_request(request: object) -> None:
    """Every id the request holds (``ids.check_ids``, token names included) is valid, else
    ``InvalidId``: checked before any service sees it, so no id of any length reaches NATS."""
    if isinstance(request, Message):
        extra = frozenset({"name"}) if request.DESCRIPTOR.name in TOKEN_NAMES else frozenset()
        check_ids(request, extra)


def answers_errors(method: Method) -> Method:
    """``method`` (``self, request, context``) with its request's ids checked (``check_request``) and an
    ``EdgehubError`` turned into the call's status."""

    @functools.wraps(method)
    async def mapped(self: Any, request: Any, context: Any) -> Any:
        try:
            check_request(request)
            return await method(self, request, context)
        except EdgehubError as exc:
            await context.abort(status_of(exc), str(exc))
            raise  # not reached: abort raises

    return mapped


def maps_errors(service: ServiceDescriptor) -> Callable[[C], C]:
    """Class decorator: every RPC method of ``service`` the class has answers errors (``answers_errors``)."""

    def decorate(cls: C) -> C:
        for rpc in service.methods:
            method = getattr(cls, rpc.name, None)
            if method is not None:
                setattr(cls, rpc.name, answers_errors(method))
        return cls

    return decorate
