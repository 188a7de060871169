"""What both daemons' ``[tracing] otlp_endpoint`` accepts: one rule, kept apart from ``tracing`` so that
reading a config does not import OpenTelemetry."""

from __future__ import annotations

import re

_OTLP_ENDPOINT = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[^/\s:\[\]]+)(:\d{1,5})?/?")


def check_otlp_endpoint(value: str | None) -> str | None:
    """``value`` when it is ``http://HOST:PORT`` or ``https://HOST:PORT`` (or None: tracing off)."""
    if value is not None and not _OTLP_ENDPOINT.fullmatch(value):
        raise ValueError("should be http://HOST:PORT, or https://HOST:PORT for TLS")
    return value
