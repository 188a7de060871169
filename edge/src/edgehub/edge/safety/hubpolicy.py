"""Fleet policy on the device: the policy bundles the hub pushed (``edgehub policy push``), checked,
kept and put in force in place of the local file.

A bundle is applied only when ``edgehub.sync.policies.verify_bundle`` accepts it (signed by the hub's
key this device got at enrollment, for this device, newer than the bundle in force or the same one
again) and its text is a policy this edge reads (``Policy.parse``: ``PolicyModel``). Anything else is
refused with the reason, which the twin reports (``running``) and the command's dead letter carries;
the policy in force stays (never none).

An accepted bundle is kept in ``<data_dir>/policy/bundle.pb`` (a ``PolicyAssignment``, versioned,
written atomically and durably) before it is put in force, and loaded at start, its signature checked
again: once a device accepted a bundle, the hub's policy wins over ``[safety] policy`` until a newer
bundle replaces it. ``[safety] fleet_policy = false`` is the way back to local-only: the kept bundle is
ignored and new ones are refused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edgehub.protocol.v1 import policy_pb2
from edgehub.sync.auth import write_secret
from edgehub.sync.decisions import HubKey
from edgehub.sync.policies import ASSIGNMENTS, PolicyRefused, peek_version, verify_bundle
from edgehub.sync.records import RecordUnreadable

from ..errors import ConfigError
from .policy import Policy, PolicyEngine

log = logging.getLogger("edgehub.edge.policy")
P = policy_pb2
BUNDLE_FILE = "bundle.pb"


class HubPolicy:
    """This device's side of fleet policy (see the module docstring)."""

    def __init__(self, engine: PolicyEngine, folder: Path, device_id: str, *, enabled: bool = True) -> None:
        self.engine = engine
        self.path = Path(folder) / BUNDLE_FILE
        self.device_id = device_id
        self.enabled = enabled
        self.bundle: P.PolicyBundle | None = None
        """The bundle in force (None: the local file or the default)."""
        self.refused = P.RunningPolicy()
        """The last refusal (its ``refused_*`` fields only)."""

    def load(self, key: HubKey | None) -> None:
        """Put the kept bundle back in force, when there is one, it is still the hub's (``key``) and
        this edge reads it; else the local policy stays, with the reason logged and reported."""
        if not self.enabled or not self.path.exists():
            if self.path.exists():
                log.warning("%s ignored: [safety] fleet_policy is off", self.path)
            return
        try:
            kept = ASSIGNMENTS.decode(self.path.read_bytes())
        except (OSError, RecordUnreadable) as exc:
            self.refuse(PolicyRefused(f"the kept bundle {self.path} is unreadable: {exc}"))
            return
        if key is None:
            self.refuse(PolicyRefused("no hub key to check the kept bundle with", kept.version))
            return
        try:
            self._adopt(kept.signed, key, keep=False)
        except PolicyRefused as refused:
            self.refuse(refused)

    def apply(self, signed: P.SignedPolicy, key: HubKey) -> bool:
        """Check ``signed`` and put it in force (True), or find it is the bundle in force already
        (False); ``PolicyRefused`` saying why it is not applied (the policy in force stays)."""
        try:
            if not self.enabled:
                raise PolicyRefused(
                    "this device takes no policy from the hub ([safety] fleet_policy = false)",
                    peek_version(signed),
                )
            return self._adopt(signed, key, keep=True)
        except PolicyRefused as refused:
            self.refuse(refused)
            raise

    def _adopt(self, signed: P.SignedPolicy, key: HubKey, *, keep: bool) -> bool:
        bundle = verify_bundle(key, signed, self.device_id, self.bundle)
        if self.bundle is not None and bundle.version == self.bundle.version:
            return False  # the same bundle again (a command delivered twice, the start's check)
        try:
            policy = Policy.parse(bundle.text, source=f"hub bundle {bundle.version}", version=bundle.version)
        except ConfigError as exc:
            raise PolicyRefused(f"policy bundle {bundle.version} is not a policy this edge reads: {exc}",
                                bundle.version) from None  # fmt: skip
        if keep:  # on disk before in force: a restart finds what ran
            record = P.PolicyAssignment(version=bundle.version, sha256=bundle.sha256, signed=signed)
            write_secret(self.path, ASSIGNMENTS.encode(record))
        self.engine.adopt(policy)
        self.bundle = bundle
        return True

    def refuse(self, refused: PolicyRefused) -> None:
        log.error("policy bundle refused, the policy in force stays: %s", refused.reason)
        self.refused = P.RunningPolicy(
            refused_version=refused.version, refused_reason=refused.reason[:500], refused_at=time.time()
        )

    def running(self) -> P.RunningPolicy:
        """What the twin reports: the policy in force, and the last refusal."""
        out = P.RunningPolicy()
        out.CopyFrom(self.refused)
        out.source = self.engine.source
        out.sha256 = self.engine.policy.sha256
        out.version = self.bundle.version if self.bundle is not None else 0
        return out
