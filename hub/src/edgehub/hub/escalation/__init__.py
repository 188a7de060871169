"""Escalation: the hub's model answers the steps edge agents were unsure of (``service.py``), fairly
across devices (``fair.py``)."""

from .fair import FairQueue
from .service import EscalationService

__all__ = ["EscalationService", "FairQueue"]
