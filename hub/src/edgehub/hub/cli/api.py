"""Calling the hub's management API from the CLI: where it is, its CA and the operator's token, and
one call with a clear error (and exit code) for each status an operator can act on.

The API is TLS with the hub's own CA and wants a bearer token: ``EDGEHUB_CA`` names the CA file and
``EDGEHUB_TOKEN`` (or ``EDGEHUB_TOKEN_FILE``) the token. On the hub's machine both default to the
hub's trust folder (``.edgehub/hub/trust/ca.pem`` and ``admin.token``, or ``EDGEHUB_HUB__AUTH__DIR``).

A W3C trace context in ``TRACEPARENT`` (and ``TRACESTATE``; OpenTelemetry's environment carriers) is sent
as the call's metadata, validated first: a goal submitted from a traced script joins the script's trace.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from edgehub.cli.common import ExitCode, fail
from edgehub.protocol.ids import InvalidId
from edgehub.protocol.v1 import hub_pb2_grpc
from edgehub.sync import tracing

from ..api.errors import check_request

T = TypeVar("T")
ApiOpt = Annotated[str, typer.Option("--api", envvar="EDGEHUB_API", help="The hub's management API address.")]
DEFAULT_API = "127.0.0.1:7443"


def _trust_dir() -> Path:
    return Path(os.environ.get("EDGEHUB_HUB__AUTH__DIR", ".edgehub/hub/trust"))


def credentials(*, token: bool = True) -> grpc.ChannelCredentials:
    """TLS against the hub's CA, plus the operator's bearer token (when ``token``)."""
    ca = Path(os.environ.get("EDGEHUB_CA") or _trust_dir() / "ca.pem")
    try:
        creds = grpc.ssl_channel_credentials(ca.read_bytes())
    except OSError as exc:
        fail(f"cannot read the hub's CA certificate {ca} ({exc.strerror}): set EDGEHUB_CA")
    if not token:
        return creds
    value = os.environ.get("EDGEHUB_TOKEN", "")
    token_file = Path(os.environ.get("EDGEHUB_TOKEN_FILE") or _trust_dir() / "admin.token")
    if not value and token_file.exists():
        try:
            value = token_file.read_bytes().decode().strip()
        except OSError as exc:
            fail(f"cannot read the token file {token_file} ({exc.strerror}): set EDGEHUB_TOKEN_FILE")
        except UnicodeDecodeError:
            fail(f"the token file {token_file} is not UTF-8 text: set EDGEHUB_TOKEN_FILE")
    if not value:
        return creds  # the hub answers UNAUTHENTICATED, with advice below
    return grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(value))


def call(
    api: str, method: Callable[[hub_pb2_grpc.HubServiceStub], T], creds: grpc.ChannelCredentials | None = None
) -> T:
    """One API call with a clear error for each status an operator can act on; a request holding an
    invalid id (``check_request``, the hub's own check) is refused before it is sent."""
    with grpc.secure_channel(api, creds or credentials()) as channel:
        checked = grpc.intercept_channel(channel, _ChecksIds(), _CarriesTrace())
        try:
            return method(hub_pb2_grpc.HubServiceStub(checked))
        except InvalidId as exc:
            fail(exc.message, ExitCode.ERROR)
        except grpc.RpcError as exc:
            code, detail = exc.code(), exc.details()
            if code == grpc.StatusCode.UNAVAILABLE:
                fail(f"cannot reach the hub API at {api} (is `edgehub hub run` running? {detail})")
            if code == grpc.StatusCode.UNAUTHENTICATED:
                fail(f"{detail}: set EDGEHUB_TOKEN (the first admin token is in the hub's admin.token)")
            bad_input = code == grpc.StatusCode.INVALID_ARGUMENT
            fail(f"{code.name.lower()}: {detail}", ExitCode.ERROR if bad_input else ExitCode.FAILED)


class _ChecksIds(grpc.UnaryUnaryClientInterceptor):
    """Checks each request's ids (``InvalidId``) before it leaves."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        check_request(request)
        return continuation(details, request)


class _Details(
    collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """A call's details with other metadata (grpc's own type cannot be copied with changes)."""


class _CarriesTrace(grpc.UnaryUnaryClientInterceptor):
    """Sends the trace context of ``TRACEPARENT``/``TRACESTATE`` (when valid) as the call's metadata."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        carrier = {k.lower(): v for k in ("TRACEPARENT", "TRACESTATE") if (v := os.environ.get(k))}
        trace = tracing.inject({}, tracing.extract(carrier))
        if trace:
            metadata = [*(details.metadata or ()), *trace.items()]
            details = _Details(
                details.method, details.timeout, metadata, details.credentials,
                details.wait_for_ready, details.compression,
            )  # fmt: skip
        return continuation(details, request)


def as_json_line(msg: Message) -> str:
    """One message as a JSON line (``--json``): field names as in the .proto, every field shown."""
    return json.dumps(
        MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    )
