"""PII masking for everything that leaves the device.

Recognisers, applied in this order (each sees the text the previous ones masked):

==============  =================================================================================
PRIVATE_KEY     PEM private key blocks (also a block cut off before its END line)
SECRET          API keys and tokens with known shapes (OpenAI/Stripe ``sk-``, GitHub ``ghp_``/
                ``github_pat_``, Slack ``xox?-``, AWS ``AKIA``, Google ``AIza``, JWTs, ``Bearer``),
                and the value in ``password=...``, ``api_key: ...``, ``token=...`` assignments
EMAIL           addresses
IBAN            candidates validated by their ISO 7064 checksum (python-stdnum)
CARD            13-19 digit runs (spaces/dashes allowed) that pass the Luhn check (python-stdnum)
IP              IPv4 and IPv6 addresses that parse (``ipaddress``)
PHONE           numbers Google's libphonenumber (``phonenumbers``) finds and validates
==============  =================================================================================

Names are not masked: the libraries that do it well (Presidio, spaCy) need a language model
download, which edge devices do not make; see docs/safety.md.
Checksums keep look-alikes (order numbers, version strings, timestamps) unmasked.
The mapping token -> original stays on the device in the vault (``vault``); ``unmask`` restores it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import phonenumbers
from stdnum import iban, luhn

from edgehub.protocol.v1 import agent_pb2

from ..store.base import VaultEntry
from .vault import VaultKey

S = agent_pb2
Span = tuple[int, int]
Finder = Callable[[str], Iterator[Span]]

_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)", re.S
)
_SECRET_SHAPES = re.compile(
    r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|sk_(?:live|test)_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
    r"|(?<=Bearer )[A-Za-z0-9._~+/-]{16,}=*"
)
_SECRET_ASSIGN = re.compile(
    r"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd|pwd)"
    r"\b[\"']?\s*[:=]\s*[\"']?([^\s\"',;]{6,})"
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")
_TOKEN = re.compile(r"<([A-Z_]+)_([a-z]{10})>")


def _regex(rx: re.Pattern[str], group: int = 0) -> Finder:
    def find(text: str) -> Iterator[Span]:
        for m in rx.finditer(text):
            yield m.span(group)

    return find


def _validated(rx: re.Pattern[str], valid: Callable[[str], bool]) -> Finder:
    def find(text: str) -> Iterator[Span]:
        for m in rx.finditer(text):
            if valid(m.group()):
                yield m.span()

    return find


def _iban_valid(s: str) -> bool:
    return bool(iban.is_valid(s))


def _card_valid(s: str) -> bool:
    digits = re.sub(r"[ -]", "", s)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and bool(luhn.is_valid(digits))


def _ip_valid(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def _phones(region: str) -> Finder:
    def find(text: str) -> Iterator[Span]:
        if sum(c.isdigit() for c in text) < 7:
            return  # the matcher is the slowest recogniser; most texts have no phone-length digit run
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            yield m.start, m.end

    return find


@dataclass(frozen=True, slots=True)
class Recognizer:
    kind: str
    find: Finder


def recognizers(phone_region: str = "US") -> tuple[Recognizer, ...]:
    return (
        Recognizer("PRIVATE_KEY", _regex(_PRIVATE_KEY)),
        Recognizer("SECRET", _regex(_SECRET_SHAPES)),
        Recognizer("SECRET", _regex(_SECRET_ASSIGN, 1)),
        Recognizer("EMAIL", _regex(_EMAIL)),
        Recognizer("IBAN", _validated(_IBAN, _iban_valid)),
        Recognizer("CARD", _validated(_CARD, _card_valid)),
        Recognizer("IP", _validated(_IPV4, _ip_valid)),
        Recognizer("IP", _validated(_IPV6, _ip_valid)),
        Recognizer("PHONE", _phones(phone_region)),
    )


class Scrubber:
    """Masks PII in text and in step events, collecting vault entries for what it masked."""

    def __init__(self, key: VaultKey, *, phone_region: str = "US") -> None:
        self.key = key
        self.recognizers = recognizers(phone_region)

    def mask(self, text: str, sealed: list[VaultEntry] | None = None) -> str:
        for rec in self.recognizers:
            spans = list(rec.find(text))
            for start, end in reversed(spans):
                original = text[start:end]
                token = self.key.token(rec.kind, original)
                if sealed is not None:
                    sealed.append(VaultEntry(token, rec.kind, self.key.seal(token, original)))
                text = text[:start] + token + text[end:]
        return text

    def _mask_json(self, value: Any, sealed: list[VaultEntry]) -> Any:
        if isinstance(value, str):
            return self.mask(value, sealed)
        if isinstance(value, list):
            return [self._mask_json(v, sealed) for v in value]
        if isinstance(value, dict):
            return {k: self._mask_json(v, sealed) for k, v in value.items()}
        return value

    def _mask_args(self, args_json: str, sealed: list[VaultEntry]) -> str:
        try:
            args = json.loads(args_json)
        except json.JSONDecodeError:
            return self.mask(args_json, sealed)
        return json.dumps(self._mask_json(args, sealed), ensure_ascii=False)

    def __call__(self, event: agent_pb2.StepEvent) -> tuple[agent_pb2.StepEvent, list[VaultEntry]]:
        """The event as it may leave the device, and the vault entries for what was masked."""
        sealed: list[VaultEntry] = []
        out = S.StepEvent()
        out.CopyFrom(event)
        out.thought = self.mask(out.thought, sealed)
        out.rationale = self.mask(out.rationale, sealed)
        out.detail = self.mask(out.detail, sealed)
        out.observation.output = self.mask(out.observation.output, sealed)
        if out.action.args_json:
            out.action.args_json = self._mask_args(out.action.args_json, sealed)
        return out, sealed


def unmask(text: str, lookup: Callable[[str], VaultEntry | None], key: VaultKey) -> str:
    """Replace every token found in the vault with its original (unknown tokens stay)."""

    def restore(m: re.Match[str]) -> str:
        entry = lookup(m.group())
        return key.open(m.group(), entry.sealed) if entry is not None else m.group()

    return _TOKEN.sub(restore, text)
