"""The edge store on SQLite, one module per concern over one shared connection (``connection``):
``agents``, ``outbox`` (mind-log, outbox, PII vault), ``sessions`` (L2 turns and notes), ``approvals``,
``transfer`` (an agent's export and import for migrations), ``episodes`` (L3), ``knowledge`` (the L4
answers cache); ``store`` composes them into ``SqliteStore`` with the tool intents and the step commit."""

from .episodes import EPISODE_PARTS
from .outbox import EDGE_EVENT_SCHEMA_VERSION, MAX_RESULT_CHARS
from .store import TASK_ENDS, SqliteStore
from .transfer import BUNDLE_SCHEMA_VERSION

__all__ = [
    "BUNDLE_SCHEMA_VERSION",
    "EDGE_EVENT_SCHEMA_VERSION",
    "EPISODE_PARTS",
    "MAX_RESULT_CHARS",
    "TASK_ENDS",
    "SqliteStore",
]
