"""Agent memory on the device: L1 window selection and compaction into the L2 summary."""

from .compaction import Compactor, extractive_summary
from .l1 import steps_to_compact

__all__ = ["Compactor", "extractive_summary", "steps_to_compact"]
