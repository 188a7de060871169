"""``edgehub hub leaf-config``'s logic (hub/leaf.py) without a hub: when the trust block counts as
changed, that a leaf keeps its operator JWT, and whose credentials a leaf gets. The command against a
running hub and a real leaf is tests/integration/test_nats_leaf.py."""

from __future__ import annotations

import re
import time
from pathlib import Path

from edgehub.hub.fleet.leaf import _creds_account, _normalised, leaf_creds, trust_block
from edgehub.sync.auth import Trust, decode_jwt

OPERATOR = re.compile(r'^operator: "([^"]+)"$', re.M)


def test_a_block_issued_again_with_nothing_new_is_unchanged_and_keeps_the_operator_jwt(
    tmp_path: Path,
) -> None:
    trust = Trust.load_or_create(tmp_path / "trust")
    first = trust_block(trust, {})
    time.sleep(1.1)  # JWTs carry their issue time in seconds: the text differs, the claims do not
    again = trust_block(trust, {}, previous=first)
    fresh = trust.server_config({})
    assert _normalised(fresh) == _normalised(first)
    assert fresh != first  # why claims are compared, not text
    assert _normalised(again) == _normalised(first)
    first_operator, again_operator = OPERATOR.search(first), OPERATOR.search(again)
    assert first_operator is not None
    assert again_operator is not None
    assert again_operator.group(1) == first_operator.group(1)  # a reloading leaf refuses another


def test_a_revocation_changes_the_block(tmp_path: Path) -> None:
    trust = Trust.load_or_create(tmp_path / "trust")
    _, device_key = leaf_creds(trust, "some-device")
    before = trust_block(trust, {})
    after = trust_block(trust, {device_key: int(time.time())}, previous=before)
    assert _normalised(after) != _normalised(before)
    assert device_key in decode_jwt_of_account(after)


def decode_jwt_of_account(block: str) -> str:
    """The revocations claim of the application account's JWT in ``block``, as text."""
    tokens = re.findall(r'"(ey[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)"', block)
    return " ".join(str(decode_jwt(t).get("nats", {}).get("revocations", {})) for t in tokens)


def test_leaf_credentials_are_a_user_of_this_hubs_account(tmp_path: Path) -> None:
    trust = Trust.load_or_create(tmp_path / "trust")
    creds, user_key = leaf_creds(trust, "gw-1")
    assert _creds_account(creds) == trust.account_id
    assert user_key.startswith("U")  # a user's public key (a seed would start with "SU")
    other = Trust.load_or_create(tmp_path / "another-hub")
    assert _creds_account(creds) != other.account_id  # another hub's leaf folder gets new ones
    assert _creds_account("not credentials") is None
