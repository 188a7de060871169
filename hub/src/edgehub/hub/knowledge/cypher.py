"""The graph's Cypher: the layout of nodes and relationships, the batched writes and the query builders.

Layout (every statement is a node, so it can carry its times and provenance and be linked to what it
came from and what it closed):

    (:Entity {id, name, kind, recorded_at})
    (:Fact {id, subject, predicate, object, value, object_key, functional, valid_from, valid_to,
            stated_valid_to, recorded_at, superseded_at, ingest, device_id, agent_id, episode_id, step_id})
    (:Fact)-[:SUBJECT]->(:Entity)          every fact
    (:Fact)-[:OBJECT]->(:Entity)           relations (the object is an entity)
    (:Fact)-[:CLOSES {recorded_at, valid_to}]->(:Fact)    a contradiction ended the other's validity
    (:Fact)-[:SUPERSEDES {recorded_at}]->(:Fact)          same start, other object: a correction
    (:Episode {id, device_id, agent_id, key, text, embedding, at, importance, step, received_at, batch,
               consolidated_run, consolidated_at, settled_run, settled_reason})
                                           an edge's L3 memory; labelled :Pending until a run takes it
    (:Fact)-[:ABSTRACTED_FROM]->(:Episode) consolidation: the episodes a fact was abstracted from
    (:DreamRun {id, at, clusters, facts, episodes, settled, rejected, prune_sent_at})
    (:Migration {version, name, checksum, applied_at})

``valid_to`` is denormalised: the earliest of ``stated_valid_to`` and every CLOSES edge's ``valid_to``.
The CLOSES edges are its transaction-time history, so "as known at T" queries recompute it from the
edges recorded by T. Every value reaches Cypher as a parameter, never as query text; only validated
integers (depths) and fixed fragments are formatted in. Reads answer in one record (lists collected on
the server): the async driver's cost is per record, about 0.3 ms each on two busy cores.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import Hop

UPSERT_ENTITIES = """
UNWIND $entities AS e
MERGE (n:Entity {id: e.id})
ON CREATE SET n.recorded_at = $now
SET n.name = e.name, n.kind = e.kind
RETURN count(n) AS entities
"""

# Entities that facts name but the batch does not declare: created bare (name = id) if missing.
ENSURE_ENTITIES = """
UNWIND $ids AS id
MERGE (e:Entity {id: id})
ON CREATE SET e.name = id, e.kind = 'thing', e.recorded_at = $now
"""

# Facts, after their entities exist. Only facts created by this call ($ingest) get edges and
# contradiction handling: a fact already in the graph is left exactly as it is, which makes
# re-ingesting a batch a no-op.
_CREATE_FACTS = """
UNWIND $facts AS item
MERGE (f:Fact {id: item.id})
ON CREATE SET f += item.props, f.valid_from = datetime(item.valid_from), f.valid_to = datetime(item.valid_to),
  f.stated_valid_to = datetime(item.valid_to), f.recorded_at = $now, f.ingest = $ingest
WITH f, item WHERE f.ingest = $ingest
MATCH (s:Entity {id: item.props.subject})
CREATE (f)-[:SUBJECT]->(s)
WITH f, item
CALL (f, item) {
  WITH f, item WHERE item.props.object IS NOT NULL
  MATCH (o:Entity {id: item.props.object})
  CREATE (f)-[:OBJECT]->(o)
}
"""

# Many-valued facts: nothing to contradict.
INGEST_FACTS = _CREATE_FACTS + "RETURN count(f) AS created, 0 AS closed, 0 AS superseded"

# Functional facts, one round at a time (at most one per subject and predicate; see model.plan).
INGEST_FUNCTIONAL_FACTS = (
    _CREATE_FACTS
    + """
CALL (f) {
  // current contradicting facts that started earlier: f ends them; same start: f replaces them
  MATCH (c:Fact {subject: f.subject, predicate: f.predicate})
  WHERE c.functional AND c.superseded_at IS NULL AND c.object_key <> f.object_key
    AND c.valid_from <= f.valid_from AND (c.valid_to IS NULL OR c.valid_to > f.valid_from)
  FOREACH (_ IN CASE WHEN c.valid_from < f.valid_from THEN [1] ELSE [] END |
    SET c.valid_to = f.valid_from
    CREATE (f)-[:CLOSES {recorded_at: $now, valid_to: f.valid_from}]->(c))
  FOREACH (_ IN CASE WHEN c.valid_from = f.valid_from THEN [1] ELSE [] END |
    SET c.superseded_at = $now
    CREATE (f)-[:SUPERSEDES {recorded_at: $now}]->(c))
  RETURN sum(CASE WHEN c.valid_from < f.valid_from THEN 1 ELSE 0 END) AS closed,
         sum(CASE WHEN c.valid_from = f.valid_from THEN 1 ELSE 0 END) AS superseded
}
CALL (f) {
  // a contradicting fact already known to start later ends f (f arrived late)
  MATCH (c:Fact {subject: f.subject, predicate: f.predicate})
  WHERE c.functional AND c.superseded_at IS NULL AND c.object_key <> f.object_key
    AND c.valid_from > f.valid_from AND (f.valid_to IS NULL OR f.valid_to > c.valid_from)
  WITH f, c ORDER BY c.valid_from LIMIT 1
  SET f.valid_to = c.valid_from
  CREATE (c)-[:CLOSES {recorded_at: $now, valid_to: c.valid_from}]->(f)
  RETURN count(c) AS bounded
}
RETURN count(f) AS created, sum(closed) + sum(bounded) AS closed, sum(superseded) AS superseded
"""
)

RETRACT = """
UNWIND $ids AS id
MATCH (f:Fact {id: id}) WHERE f.superseded_at IS NULL
SET f.superseded_at = $now
RETURN count(f) AS retracted
"""


def visible(var: str, latest: bool) -> str:
    """A predicate: fact ``var`` was true at ``$valid_at`` as known at ``$known_at`` (``latest``: as known
    now, from the denormalised fields alone)."""
    if latest:
        return (
            f"{var}.superseded_at IS NULL AND {var}.valid_from <= $valid_at "
            f"AND ({var}.valid_to IS NULL OR {var}.valid_to > $valid_at)"
        )
    return (
        f"{known(var, latest)} AND {var}.valid_from <= $valid_at "
        f"AND ({var}.stated_valid_to IS NULL OR {var}.stated_valid_to > $valid_at) "
        f"AND NOT EXISTS {{ MATCH ({var})<-[r:CLOSES]-() WHERE r.recorded_at <= $known_at "
        f"AND r.valid_to <= $valid_at }}"
    )


def known(var: str, latest: bool) -> str:
    """A predicate: fact ``var`` was recorded and not superseded as of ``$known_at`` (any valid time)."""
    if latest:
        return f"{var}.superseded_at IS NULL"
    retracted_later = f"({var}.superseded_at IS NULL OR {var}.superseded_at > $known_at)"
    return f"{var}.recorded_at <= $known_at AND {retracted_later}"


def projection(var: str, latest: bool) -> str:
    """A map of fact ``var`` with ``valid_to`` as known at ``$known_at``. Times travel as ISO strings
    both ways: the Python driver's DateTime conversion costs ~30 us a value, the string ~1 us."""
    valid_to = (
        f"{var}.valid_to"
        if latest
        else f"reduce(m = {var}.stated_valid_to, "
        f"t IN [({var})<-[r:CLOSES]-() WHERE r.recorded_at <= $known_at | r.valid_to] | "
        f"CASE WHEN m IS NULL OR t < m THEN t ELSE m END)"
    )
    return (
        f"{var} {{.id, .subject, .predicate, .object, .value, .functional, "
        f".device_id, .agent_id, .episode_id, .step_id, valid_from: toString({var}.valid_from), "
        f"stated_valid_to: toString({var}.stated_valid_to), recorded_at: toString({var}.recorded_at), "
        f"valid_to: toString({valid_to})}}"
    )


ENTITY = "e {.id, .name, .kind}"


# an exact id first; else the fulltext index on names and ids (migration 3), best match first
LOOKUP = """
OPTIONAL MATCH (exact:Entity {id: $text})
CALL (exact) {
  WITH exact WHERE exact IS NOT NULL
  RETURN exact AS e, 1.0e9 AS score
  UNION
  WITH exact WHERE exact IS NULL
  CALL db.index.fulltext.queryNodes('entity_names', $words) YIELD node, score
  RETURN node AS e, score
}
WITH e, score ORDER BY score DESC LIMIT $limit
RETURN collect(e {.id, .name, .kind}) AS entities
"""

# Lucene's query syntax: these characters (and the words AND OR NOT) mean something; a user's words
# are escaped so they are only ever words
LUCENE_SPECIAL = frozenset('+-&|!(){}[]^"~*?:\\/')


def lucene_words(text: str) -> str:
    """``text`` as plain Lucene terms (each character with a meaning escaped; operators lower-cased)."""
    escaped = "".join(f"\\{c}" if c in LUCENE_SPECIAL else c for c in text)
    return " ".join(w.lower() if w in ("AND", "OR", "NOT", "TO") else w for w in escaped.split())


def facts_about(direction: str, latest: bool, history: bool) -> str:
    rel = {"out": ":SUBJECT", "in": ":OBJECT", "both": ":SUBJECT|OBJECT"}[direction]
    when = known("f", latest) if history else visible("f", latest)
    return f"""
MATCH (e:Entity {{id: $id}})<-[{rel}]-(f:Fact)
WHERE ($predicate IS NULL OR f.predicate = $predicate) AND {when}
WITH f ORDER BY f.predicate, f.valid_from, f.id LIMIT $limit
RETURN collect({projection("f", latest)}) AS facts
"""


def neighbourhood(depth: int, latest: bool) -> str:
    """Entities within ``depth`` relations of ``$id`` (either direction), the relations among them and
    their literal facts, each part capped."""
    return f"""
MATCH (start:Entity {{id: $id}})
OPTIONAL MATCH (start) ((a:Entity)<-[:SUBJECT|OBJECT]-(f:Fact)-[:SUBJECT|OBJECT]->(b:Entity)
                       WHERE f.object IS NOT NULL AND {visible("f", latest)}){{1,{depth}}} (other:Entity)
WITH start, collect(DISTINCT other)[..$limit] AS others
WITH [start] + [o IN others WHERE o <> start] AS nodes
WITH nodes, [n IN nodes | n.id] AS ids
UNWIND nodes AS e
OPTIONAL MATCH (e)<-[:SUBJECT]-(f:Fact)
WHERE (f.object IS NULL OR f.object IN ids) AND {visible("f", latest)}
WITH nodes, e, collect({projection("f", latest)})[..$fact_limit] AS facts
RETURN [n IN nodes | n {{.id, .name, .kind}}] AS entities, collect(facts) AS facts
"""


def multi_hop(hops: Sequence[Hop], latest: bool) -> str:
    """Paths from ``$start`` following ``hops`` in order; hop i's predicate is ``$p{i}`` (null: any)."""
    pattern, where = ["(e0:Entity {id: $start})"], []
    for i, hop in enumerate(hops):
        near, far = {"out": (":SUBJECT", ":OBJECT"), "in": (":OBJECT", ":SUBJECT")}.get(
            hop.direction, (":SUBJECT|OBJECT", ":SUBJECT|OBJECT")
        )
        pattern.append(f"<-[{near}]-(f{i}:Fact)-[{far}]->(e{i + 1}:Entity)")
        where.append(f"($p{i} IS NULL OR f{i}.predicate = $p{i}) AND f{i}.object IS NOT NULL")
        where.append(visible(f"f{i}", latest))
    n = len(hops)
    entities = ", ".join(f"e{i} {{.id, .name, .kind}}" for i in range(n + 1))
    facts = ", ".join(projection(f"f{i}", latest) for i in range(n))
    # one record holding every path: the async driver pays per record (a message, a few socket reads)
    return (
        f"MATCH {''.join(pattern)}\nWHERE {' AND '.join(where)}\n"
        f"WITH [{entities}] AS entities, [{facts}] AS facts LIMIT $limit\n"
        f"RETURN collect({{entities: entities, facts: facts}}) AS paths"
    )


# -- episodes and consolidation ("dreamer") ------------------------------------------------------

# New episodes are :Pending; one already stored (a resent event) is left exactly as it is.
ADD_EPISODES = """
UNWIND $episodes AS ep
MERGE (e:Episode {id: ep.id})
ON CREATE SET e += ep.props, e.at = datetime(ep.at), e.received_at = $now, e.batch = $batch, e:Pending
WITH e WHERE e.batch = $batch
RETURN count(e) AS created
"""

PENDING_EPISODES = """
MATCH (e:Episode:Pending)
WITH e ORDER BY e.at, e.id LIMIT $limit
RETURN collect(e {.id, .device_id, .agent_id, .key, .text, .embedding, .importance, .step,
                  at: toString(e.at)}) AS episodes
"""

# A write takes each episode's lock (held to the end of the transaction), so the pending check after
# it sees what a concurrent run committed: two hubs never consolidate one episode twice.
LOCK_EPISODES = """
UNWIND $ids AS id
MATCH (e:Episode {id: id})
SET e.dream_lock = $run
REMOVE e.dream_lock
"""

STILL_PENDING = """
UNWIND $ids AS id
MATCH (e:Episode:Pending {id: id})
RETURN collect(e.id) AS pending
"""

LINK_SOURCES = """
UNWIND $links AS link
MATCH (f:Fact {id: link.fact})
UNWIND link.episodes AS episode_id
MATCH (e:Episode {id: episode_id})
MERGE (f)-[:ABSTRACTED_FROM]->(e)
"""

MARK_CONSOLIDATED = """
UNWIND $ids AS id
MATCH (e:Episode {id: id})
REMOVE e:Pending
SET e.consolidated_run = $run, e.consolidated_at = $now
"""

MARK_SETTLED = """
UNWIND $settled AS s
MATCH (e:Episode {id: s.id})
REMOVE e:Pending
SET e.settled_run = $run, e.settled_reason = s.reason
"""

# CREATE, not MERGE: a run id is used once (the unique constraint refuses a second, rolling it back)
RECORD_RUN = """
CREATE (r:DreamRun {id: $run, at: $now, clusters: $clusters, facts: $facts, episodes: $episodes,
                    settled: $settled, rejected: $rejected})
"""

DREAM_RUN = """
MATCH (r:DreamRun {id: $run})
RETURN r {.id, .clusters, .facts, .episodes, .settled, .rejected, at: toString(r.at),
          prune_sent: r.prune_sent_at IS NOT NULL} AS run
"""

EPISODES_TO_PRUNE = """
MATCH (e:Episode {consolidated_run: $run})
WITH e.device_id AS device, e.key AS key ORDER BY device, key
RETURN device, collect(key) AS keys
"""

UNSENT_PRUNES = """
MATCH (r:DreamRun) WHERE r.prune_sent_at IS NULL AND r.episodes > 0
WITH r ORDER BY r.at
RETURN collect(r.id) AS runs
"""

MARK_PRUNE_SENT = """
MATCH (r:DreamRun {id: $run})
SET r.prune_sent_at = coalesce(r.prune_sent_at, $now)
"""
