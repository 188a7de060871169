"""PII masking: a table of positives and look-alikes, masking of outgoing events, and unmasking."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from edgehub.edge.safety import Scrubber, VaultError, VaultKey, unmask
from edgehub.edge.store import SqliteStore
from edgehub.protocol.v1 import agent_pb2

S = agent_pb2
TOKEN = re.compile(r"<([A-Z_]+)_[a-z]{10}>")

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"

# (text, the kinds that must be masked in it, a substring that must survive unmasked)
CASES: list[tuple[str, list[str], str]] = [
    ("write to ana.lopez@example.com today", ["EMAIL"], "today"),
    ("cc: first.last+tag@sub.example.co.uk", ["EMAIL"], "cc:"),
    ("visa 4111 1111 1111 1111 on file", ["CARD"], "on file"),
    ("mc 5555-5555-5555-4444", ["CARD"], "mc"),
    ("amex 378282246310005", ["CARD"], "amex"),
    ("iban DE89 3704 0044 0532 0130 00", ["IBAN"], "iban"),
    ("pay GB82WEST12345698765432 now", ["IBAN"], "now"),
    ("call +1 415-555-2671 please", ["PHONE"], "please"),
    ("office (212) 555-0198", ["PHONE"], "office"),
    ("uk +44 20 7946 0958", ["PHONE"], "uk"),
    ("host 192.168.1.20 is up", ["IP"], "is up"),
    ("v6 2001:db8::8a2e:370:7334 ok", ["IP"], "ok"),
    ("key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv", ["SECRET"], "key"),
    ("gh ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", ["SECRET"], "gh"),
    ("aws AKIAIOSFODNN7EXAMPLE", ["SECRET"], "aws"),
    ("slack xoxb-123456789012-abcdefABCDEF", ["SECRET"], "slack"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", ["SECRET"], "jwt"),
    ("Authorization: Bearer abcdef0123456789abcdef", ["SECRET"], "Authorization"),
    ("password=hunter2hunter2", ["SECRET"], "password="),
    ('{"api_key": "zz9-plural-z-alpha"}', ["SECRET"], "api_key"),
    (PEM, ["PRIVATE_KEY"], ""),
    ("both bob@example.org and 10.0.0.7", ["EMAIL", "IP"], "both"),
    # look-alikes that must stay
    ("order 4111 1111 1111 1112 shipped", [], "4111 1111 1111 1112"),
    ("serial 1234567890123", [], "1234567890123"),
    ("version 1.2.3 and 2.10.4", [], "1.2.3"),
    ("not an ip 999.12.1.300", [], "999.12.1.300"),
    ("time 12:30:45 on 2026-11-25", [], "12:30:45"),
    ("DE00 1234 5678 9012 3456 78 is no iban", [], "DE00 1234 5678 9012 3456 78"),
    ("mail me at example dot com", [], "example dot com"),
    ("the sky-blue token bucket", [], "token bucket"),
    ("exit status 0\nleaf.txt", [], "exit status 0"),
    ("count 42 items, 17 left", [], "count 42 items, 17 left"),
    ("4111111111111111111111 too long", [], "4111111111111111111111"),
]


@pytest.fixture
def key() -> VaultKey:
    return VaultKey(os.urandom(32))


@pytest.mark.parametrize(("text", "kinds", "kept"), CASES)
def test_pii_table(key: VaultKey, text: str, kinds: list[str], kept: str) -> None:
    masked = Scrubber(key).mask(text)
    assert sorted(TOKEN.findall(masked)) == sorted(kinds), masked
    assert kept in masked


def test_the_table_has_at_least_thirty_cases_with_both_kinds() -> None:
    assert len(CASES) >= 30
    assert sum(1 for _, kinds, _ in CASES if not kinds) >= 10


def test_the_same_value_masks_to_the_same_token_and_keys_differ_per_device(key: VaultKey) -> None:
    one = Scrubber(key).mask("a@example.com")
    assert Scrubber(key).mask("a@example.com") == one
    assert Scrubber(VaultKey(os.urandom(32))).mask("a@example.com") != one


def test_outgoing_events_are_masked_the_mind_log_keeps_originals_and_the_vault_unmasks(
    tmp_path: Path,
) -> None:
    key = VaultKey.load_or_create(tmp_path / "vault.key")
    store = SqliteStore.open(tmp_path / "e.db", device_id="d", outgoing=Scrubber(key))
    state = S.AgentState(schema_version=1, agent_id="a1", goal="g", status=S.AGENT_STATUS_RUNNING)
    store.create_agent(state)
    event = S.StepEvent(schema_version=1, event_id="a1/0/0/action", agent_id="a1", step=0)
    event.thought = "email ana@example.com"
    event.action.CopyFrom(S.ToolCall(tool="write_file", args_json='{"content": "card 4111111111111111"}'))
    event.observation.output = "wrote it for +1 415-555-2671"
    store.checkpoint(state, event, [])
    out = store.outbox_pending()[0].event.step
    text = f"{out.thought} {out.action.args_json} {out.observation.output}"
    assert "ana@example.com" not in text
    assert "4111111111111111" not in text
    assert "555-2671" not in text
    assert sorted(TOKEN.findall(text)) == ["CARD", "EMAIL", "PHONE"]
    assert store.mind_log("a1")[0].thought == "email ana@example.com"
    restored = unmask(text, store.vault_get, VaultKey.load_or_create(tmp_path / "vault.key"))
    assert "ana@example.com" in restored
    assert "4111111111111111" in restored
    assert (tmp_path / "vault.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(VaultError):
        unmask(text, store.vault_get, VaultKey(os.urandom(32)))
