"""The hub's model commands on this device: ``FetchModel`` starts (or goes on with) a fetch in the
background and is acknowledged at once (the record it leaves makes a restart resume it; the twin shows
its progress and outcome); ``UseModel`` switches the running model, or is refused with the reason
(``edgehub.edge.models``)."""

from __future__ import annotations

from edgehub.protocol.ids import InvalidId, check_sha256
from edgehub.protocol.v1 import commands_pb2
from edgehub.sync.errors import MessageRejected

from ..models import ModelFetcher, ModelSwitch


class ModelCommands:
    """The ``fetch_model`` and ``use_model`` handlers."""

    def __init__(self, fetcher: ModelFetcher, switch: ModelSwitch) -> None:
        self.fetcher = fetcher
        self.switch = switch

    async def fetch(self, cmd: commands_pb2.Command) -> None:
        try:
            check_sha256(cmd.fetch_model.sha256)
        except InvalidId as exc:
            raise MessageRejected(exc.message) from None
        self.fetcher.request(cmd.fetch_model)

    async def use(self, cmd: commands_pb2.Command) -> None:
        await self.switch.use(cmd.use_model)
