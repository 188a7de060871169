"""edgehub's wire protocol: the versioned protobuf messages both ends speak (package ``edgehub.v1``).

The ``.proto`` sources live in ``protocol/proto/edgehub/v1``; the generated modules under
``edgehub.protocol.v1`` are committed and regenerated with ``make gen-protos`` (a test fails when
they are stale). Field numbers are never reused or re-typed: messages only grow.
"""

from .v1 import agent_pb2, commands_pb2, events_pb2, task_pb2

__all__ = ["agent_pb2", "commands_pb2", "events_pb2", "task_pb2"]
