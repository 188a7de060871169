"""The knowledge methods of the management API (``Consolidate``): a mixin of ``HubService``, over the
hub's ``DreamerService``. Consolidation works on the whole fleet's episodes (and prunes them on every
device): a scoped token may not run it."""

from __future__ import annotations

import logging
from typing import Any

from edgehub.protocol.errors import ErrorCode
from edgehub.protocol.v1 import hub_pb2

from ..errors import Refused
from ..fleet.scopes import ScopeGuard
from ..knowledge.dreamer import DreamReport
from ..services import HubServices
from .access import current

H = hub_pb2
log = logging.getLogger("edgehub.hub.api.knowledge")
MAX_RUN_ID = 128


def report(r: DreamReport) -> hub_pb2.ConsolidateReport:
    return H.ConsolidateReport(
        run_id=r.run_id,
        clusters=r.clusters,
        facts_written=r.facts_written,
        episodes_consolidated=r.episodes_consolidated,
        episodes_considered=r.episodes_considered,
        episodes_settled=r.episodes_settled,
        prune=[H.PrunedEpisodes(device_id=d, keys=list(keys)) for d, keys in r.prune.items()],
        rejected=[H.RejectedCluster(cluster=c, reason=why) for c, why in r.rejected],
        recorded=r.recorded,
    )


class KnowledgeApi:
    services: HubServices

    async def Consolidate(self, request: H.ConsolidateRequest, context: Any) -> H.ConsolidateReport:
        ScopeGuard.fleet(current().scope, "Consolidate")
        dreamer = self.services.dreamer
        if dreamer is None:
            raise Refused(ErrorCode.FAILED_PRECONDITION, "consolidation is not enabled on this hub")
        if len(request.run_id) > MAX_RUN_ID:
            raise Refused(ErrorCode.INVALID_ARGUMENT, f"run_id: at most {MAX_RUN_ID} characters")
        done = await dreamer.consolidate_now(request.run_id or None)
        log.info("consolidation %s run by %s", done.run_id or "(nothing to do)", current().name)
        return report(done)
