"""Goal records of schema version 1 (the JSON the first release stored in ``edgehub-goals``) read as
the ``Goal`` message: the appended migration of the format, used by the goals' ``ProtoCodec``.

Version 1 kept the same facts under the same names, with statuses as lower-case words
(``"waiting"``), the planner and the answer's origin as words (``"model"``, ``"joined"``), the
operator's plan as a JSON string (``plan_json``) and absent fields as missing keys or ``null``. A
record that is JSON but not such a goal is refused (``RecordUnreadable``) rather than half read.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from edgehub.protocol.v1 import goals_pb2
from edgehub.sync.records import RecordUnreadable

from .record import SCHEMA_VERSION

G = goals_pb2

Json = dict[str, Any]
"""A JSON object of the version 1 record, as ``json.loads`` gives it."""
ENUMS = {"status": "GOAL_STATUS_", "planner": "GOAL_PLANNER_", "answer_by": "ANSWER_BY_"}
"""Top-level fields stored as words in version 1, and their enum's prefix."""


def legacy_goal(data: bytes) -> G.Goal | None:
    """The version 1 record in ``data`` as a ``Goal``; None when ``data`` is not JSON (a protobuf
    record: its first byte is the ``schema_version`` tag, never ``{``)."""
    if data[:1] != b"{":  # json.dumps wrote the first release's records: no leading space
        return None
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise RecordUnreadable(f"a goal record that is neither protobuf nor JSON: {exc}") from None
    version = record.get("schema_version") if isinstance(record, dict) else None
    if version != 1:
        raise RecordUnreadable(f"a JSON goal record of schema version {version!r}; only version 1 was JSON")
    try:
        goal = json_format.ParseDict(_v2(record), G.Goal())
    except (ValueError, TypeError, AttributeError, json_format.ParseError) as exc:
        raise RecordUnreadable(f"a goal record of schema version 1 that cannot be read: {exc}") from None
    goal.schema_version = SCHEMA_VERSION
    return goal


def _v2(record: Json) -> Json:
    """The version 1 record's fields under version 2's names and spellings."""
    out = {k: v for k, v in record.items() if v is not None and k not in ("plan_json", "schema_version")}
    for key, prefix in ENUMS.items():
        if key in out:
            out[key] = prefix + str(out[key]).upper()
    out["tasks"] = {tid: _task(state) for tid, state in record.get("tasks", {}).items()}
    if record.get("plan_json") and (plan := _plan(record["plan_json"], out)) is not None:
        out["plan"] = plan
    return out


def _task(state: Json) -> Json:
    return {
        k: "TASK_STATUS_" + str(v).upper() if k == "status" else v for k, v in state.items() if v is not None
    }


def _plan(plan_json: str, out: Json) -> Json | None:
    """The operator's plan. One that is not JSON was refused by the planner in version 1 too, which
    could only still be pending in a goal left planning by a hub that stopped: that goal is failed as
    the planner would have failed it."""
    try:
        plan = json.loads(plan_json)
        json_format.ParseDict(plan, G.PlanDraft())
    except (ValueError, TypeError, AttributeError, json_format.ParseError) as exc:
        if out.get("status") == "GOAL_STATUS_PLANNING":
            out.update(
                status="GOAL_STATUS_FAILED",
                error=f"no valid plan: the stored plan cannot be read ({str(exc)[:200]})",
                finished_at=out.get("updated_at", 0),
            )
        return None
    return dict(plan)
