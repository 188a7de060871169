"""Models from the hub on this device (issue 21 part 2): the ones it holds (``shelf``), fetching them
resumably and verified (``fetch``), which one runs and its hash (``running``), and switching it
(``switch``). See docs/models.md."""

from .fetch import FetchFailed, ModelFetcher
from .running import Choice, ChoiceFile, HashCache, RunningModel, chosen_model
from .shelf import ModelRecord, ModelShelf
from .switch import ModelSwitch, SwitchableBrain

__all__ = [
    "Choice",
    "ChoiceFile",
    "FetchFailed",
    "HashCache",
    "ModelFetcher",
    "ModelRecord",
    "ModelShelf",
    "ModelSwitch",
    "RunningModel",
    "SwitchableBrain",
    "chosen_model",
]
